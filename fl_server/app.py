"""The Flower ServerApp: one governed run from the run config, published to the VAMN registry.

``flwr run`` (simulation or deployment) reaches ``app``; ``accute-fl`` and the tests build their
own with ``make_server_app(config)``. The database and the weights store come from the ACCUTE_
settings of the process that runs the ServerApp.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

from aggregation.flwr_adapter import record_from_arrays
from aggregation.weights_store import WeightsStore
from fl_client import protocol
from fl_client.tasks import get_task
from fl_server.config import RunConfig
from fl_server.governance import Governor
from fl_server.governance_log import GovernanceLog
from fl_server.publish import Publication, PublishGate, publisher
from fl_server.strategy import GovernedResult, GovernedStrategy, RoundRecord, ServerEvaluate
from orchestrator.security import threat_intel
from schema.config import Settings
from schema.db import make_engine
from schema.migrate import require_current_schema


def inner_strategy(config: RunConfig) -> Strategy:
    """The Flower strategy the governed wrapper drives; it samples among admitted nodes only.

    With central DP the wrapper Poisson-samples tenants itself (the sampling its accountant
    assumes), so the inner strategy trains every node it is shown (``fraction_train=1.0``).
    """
    kinds: dict[str, type[FedAvg]] = {"fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg, "krum": Krum}
    return kinds.get(config.aggregator, FedAvg)(
        fraction_train=1.0 if config.dp.central else config.fraction,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=protocol.NUM_EXAMPLES,
    )


def run_fab_hash(grid: Grid) -> str | None:
    """The hash of the FAB this run was started from (Flower's ``Run.fab_hash``); None where the
    grid carries no run (simulation of an in-process app, test grids)."""
    try:
        run = grid.run
    except (AttributeError, TypeError):  # a grid whose run was never set
        return None
    return getattr(run, "fab_hash", None) or None


def run_governed(
    grid: Grid,
    config: RunConfig,
    settings: Settings,
    on_round: Callable[[RoundRecord], None] | None = None,
    server_evaluate: ServerEvaluate | None = None,
) -> tuple[GovernedResult, Publication]:
    engine = make_engine(settings)
    try:
        require_current_schema(engine)
        # A listed bundle runs nothing: refused before the run is claimed or any node asked.
        threat_intel.refuse_listed_fab(engine, run_fab_hash(grid), "serverapp")
        governor = Governor(engine, config, settings)
        store = WeightsStore(settings.weights_dir)
        governance = GovernanceLog(engine, config, governor.policy)

        def round_done(record: RoundRecord) -> None:
            governance.round(
                record.server_round,
                record.admitted,
                record.charged,
                strategy.tenants.values(),
                strategy.skipped_nodes,
                attempt=governor.attempt,
            )
            if on_round is not None:
                on_round(record)

        # Published in the transaction that completes the run (or, after a crash between the
        # two in older versions, on the next start): never completed and unpublished.
        strategy = GovernedStrategy(
            inner_strategy(config),
            governor,
            store,
            on_round=round_done,
            server_evaluate=server_evaluate,
            publish=publisher(config, PublishGate.from_settings(settings)),
        )
        task = get_task(config.task)
        initial = {k: v.detach().numpy() for k, v in task.initial_state(config.seed).items()}
        result = strategy.start(grid, record_from_arrays(initial))
        publication: Publication = strategy.publication
        governance.finished(publication)
        return result, publication
    finally:
        engine.dispose()


def make_server_app(
    config: RunConfig | None = None,
    settings: Settings | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    server_evaluate: ServerEvaluate | None = None,
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # Flower has no hook to check a run config at submission, so this is the ServerApp's first
        # step: a bad value fails the run with one line (key, value, allowed range) before any
        # node is asked anything and any tenant admitted or charged.
        # The simulation manifest is the ClientApp's (``manifest``), not a RunConfig field.
        values = {k: v for k, v in context.run_config.items() if k != protocol.RUN_MANIFEST}
        run_config = config or RunConfig.parse(values)
        run_governed(grid, run_config, settings or Settings(), on_round, server_evaluate)

    return app


app = make_server_app()
