"""One simulation end to end: tenants in the database, the governed run, the consent scenario, the report.

``simulate(spec, settings)`` prepares the federation (organizations ``sim{seed}-tenant-K``: the
same seed is the same synthetic world, so repeated runs reuse its firms and their ledgers), runs
the governed ServerApp and the tenant ClientApp through ``executor`` (Flower's simulation engine
by default; tests pass an in-process grid), applies the consent scenario from the ``on_round``
callback (it runs in the server process after each round, before the next round's consent gate),
and builds ``report.json`` with ``fl_server.report.build_report``.

With ``spec.sweep`` every epsilon is run again as its own federation in its own SQLite file under
``OUT/sweep/`` (fresh ledgers, so earlier points do not eat later points' budgets), each beside a
centralized baseline (``simulations.baseline``).
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, select

from consent_gate import dsr
from consent_gate.gate import take_snapshot
from consent_gate.policy import ConsentPolicy
from consent_gate.records import withdraw
from fl_server.config import DpMode, RunConfig
from fl_server.report import build_report
from fl_server.round_epsilon import RoundEpsilon, round_epsilon
from fl_server.strategy import RoundRecord
from privacy import ledger
from schema.config import Settings
from schema.db import make_engine, remove_sqlite_database, transaction
from schema.errors import ConflictError
from schema.migrate import require_current_schema
from schema.models import FlRun, Organization
from simulations import preflight
from simulations.federation import TenantSetup, prepare_federation, run_federation
from simulations.heldout import server_evaluate
from simulations.scenario import SimulationSpec

#: (config, settings, manifest, tenants, on_round, server_evaluate): runs the governed federation.
Executor = Callable[
    [RunConfig, Settings, Path, int, Callable[[RoundRecord], None], Callable[..., float | None] | None], None
]


class Progress(Protocol):
    def started(self, spec: SimulationSpec, config: RunConfig, label: str) -> None: ...

    def round_done(self, record: RoundRecord, epsilon: RoundEpsilon | None) -> None: ...

    def finished(self) -> None: ...


class SilentProgress:
    def started(self, spec: SimulationSpec, config: RunConfig, label: str) -> None:
        pass

    def round_done(self, record: RoundRecord, epsilon: RoundEpsilon | None) -> None:
        pass

    def finished(self) -> None:
        pass


@dataclass
class RunOutcome:
    report: dict[str, Any]
    setups: list[TenantSetup]
    scenario: list[dict[str, Any]]
    seconds_to_first_round: float | None
    round_seconds: list[float]


@dataclass
class SimulationResult:
    spec: SimulationSpec
    config: RunConfig
    main: RunOutcome
    sweep: list[dict[str, Any]] = field(default_factory=list)


def org_prefix(seed: int) -> str:
    return f"sim{seed}-"


def check_new_run(engine: Engine, run_name: str) -> None:
    with transaction(engine) as session:
        if session.scalar(select(FlRun.id).where(FlRun.name == run_name)) is not None:
            raise ConflictError(f"run '{run_name}' already exists in this database; pick another --run-name")


class ConsentScenario:
    """Withdrawals and erasures applied after given rounds (from the ``on_round`` callback)."""

    def __init__(self, engine: Engine, spec: SimulationSpec, setups: list[TenantSetup]) -> None:
        self.engine = engine
        self.spec = spec
        self.setups = setups
        self.required = ConsentPolicy.default().required_consents(spec.task)
        self.log: list[dict[str, Any]] = []

    def _consenting(self, session: Any, index: int) -> list[str]:
        """The tenant's consenting users now, in a seeded order."""
        org = uuid.UUID(self.setups[index].organization_id)
        users = sorted(str(u) for u in take_snapshot(session, org, self.spec.task).user_ids)
        random.Random(f"{self.spec.seed}:{index}:scenario").shuffle(users)
        return users

    def after_round(self, server_round: int) -> None:
        for event in self.spec.withdrawals():
            if event.after_round != server_round:
                continue
            with transaction(self.engine) as session:
                org = self.setups[event.tenant].organization_id
                chosen = self._consenting(session, event.tenant)[: event.count]
                for user in chosen:
                    for consent_type in self.required:
                        withdraw(session, org, user, consent_type, reason="simulation scenario")
            self.log.append(
                {
                    "after_round": server_round,
                    "tenant": f"tenant-{event.tenant}",
                    "event": "withdrawal",
                    "user_ids": chosen,
                }
            )
        for erasure in self.spec.erasures():
            if erasure.after_round != server_round:
                continue
            with transaction(self.engine) as session:
                org = self.setups[erasure.tenant].organization_id
                user = self._consenting(session, erasure.tenant)[0]
                request = dsr.file_request(session, org, user, "erasure", {"source": "simulation"})
                dsr.process_request(session, request.id, organization_id=org)
            self.log.append(
                {
                    "after_round": server_round,
                    "tenant": f"tenant-{erasure.tenant}",
                    "event": "erasure",
                    "user_ids": [user],
                }
            )


def progress_epsilon(
    engine: Engine, run_name: str, server_round: int, policy: ledger.LedgerPolicy
) -> RoundEpsilon | None:
    """This run's ε and the lifetime ε after the round, for the progress line (``fl_server.round_epsilon``)."""
    with transaction(engine) as session:
        return round_epsilon(session, run_name, server_round, policy)


def print_warning(line: str) -> None:
    print(line, file=sys.stderr)


def run_one(
    spec: SimulationSpec,
    settings: Settings,
    engine: Engine,
    work_dir: Path,
    *,
    executor: Executor = run_federation,
    progress: Progress | None = None,
    label: str = "",
    warn: Callable[[str], None] = print_warning,
) -> RunOutcome:
    """Prepare the tenants, run the governed federation, return its report."""
    progress = progress or SilentProgress()
    started = time.perf_counter()
    config = spec.run_config()
    check_new_run(engine, config.run_name)
    policy = ledger.LedgerPolicy.from_settings(settings)
    caps = {f"tenant-{i}": cap for i, cap in spec.epsilon_caps().items()}
    names = [(f"tenant-{i}", f"{spec.org_prefix()}tenant-{i}") for i in range(spec.tenants)]
    for line in preflight.check(
        preflight.forecast(engine, config, names, caps, spec.delta, policy), config.rounds, config.fraction
    ):
        warn(line)
    setups = prepare_federation(
        engine,
        task=spec.task,
        tenants=spec.tenants,
        seed=spec.seed,
        manifest_path=work_dir / f"manifest-{config.run_name}.json",
        consent_share=spec.consent_share,
        epsilon_caps=spec.epsilon_caps(),
        delta=spec.delta,
        partition=spec.partition,
        alpha=spec.alpha,
        name_prefix=spec.org_prefix(),
    )
    scenario = ConsentScenario(engine, spec, setups)
    stamps: list[float] = []
    progress.started(spec, config, label)

    def on_round(record: RoundRecord) -> None:
        stamps.append(time.perf_counter())
        scenario.after_round(record.server_round)
        progress.round_done(record, progress_epsilon(engine, config.run_name, record.server_round, policy))

    executor(
        config,
        settings,
        work_dir / f"manifest-{config.run_name}.json",
        spec.tenants,
        on_round,
        server_evaluate(spec),
    )
    progress.finished()
    report = build_report(engine, config.run_name, settings.weights_dir, policy)
    report["scenario"] = scenario.log
    add_held_out_final(report, spec, config, setups)
    first = stamps[0] - started if stamps else None
    per_round = [b - a for a, b in itertools.pairwise(stamps)]
    return RunOutcome(report, setups, scenario.log, first, per_round)


def add_held_out_final(
    report: dict[str, Any], spec: SimulationSpec, config: RunConfig, setups: list[TenantSetup]
) -> None:
    """``final.test_metric`` (the last evaluated model on the server's test set; every round's
    metric is that one here) and ``final.train_metric`` (the final model on the pooled training
    records, only for a non-DP run: elsewhere it would be a metric of private records with no
    privacy accounted for it)."""
    from simulations.heldout import held_out_records, metric_of, training_records

    final = report["final"]
    evaluated = [r for r in report["rounds"] if r.get("metric") is not None]
    final["metric"] = evaluated[-1]["metric"] if evaluated else None
    final["metric_round"] = evaluated[-1]["round"] if evaluated else None
    final["test_metric"] = final["metric"]
    final["test_set"] = {
        "records": len(held_out_records(spec)),
        "source": "a fixed public split of the bundled digits"
        if spec.task == "digits"
        else "synthetic records drawn apart from every tenant's (own random stream)",
    }
    final["train_metric"] = None
    if config.dp == DpMode.OFF and final.get("weights_checksum"):
        from aggregation.weights_store import WeightsStore

        arrays = WeightsStore(Path(final["weights_path"]).parent).get(final["weights_checksum"])
        records = training_records(spec, config.holdout_fraction, [s.organization_id for s in setups])
        final["train_metric"] = metric_of(spec.task, arrays, records)


def simulate(
    spec: SimulationSpec,
    settings: Settings,
    *,
    executor: Executor = run_federation,
    progress: Progress | None = None,
    baseline: bool = True,
) -> SimulationResult:
    """The main run on the configured database, then the sweep (if any) in its own databases."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings)
    try:
        require_current_schema(engine)
        main = run_one(spec, settings, engine, out, executor=executor, progress=progress, label="run")
    finally:
        engine.dispose()
    result = SimulationResult(spec, spec.run_config(), main)
    for epsilon in spec.sweep:
        result.sweep.append(sweep_point(spec, settings, epsilon, executor, progress, baseline))
    return result


def sweep_point(
    spec: SimulationSpec,
    settings: Settings,
    epsilon: float,
    executor: Executor,
    progress: Progress | None,
    baseline: bool,
) -> dict[str, Any]:
    from schema.migrate import upgrade
    from simulations.baseline import centralized

    label = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
    directory = Path(spec.out) / "sweep" / f"eps-{label}"
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "sweep.sqlite"
    remove_sqlite_database(database)  # with a WAL or journal a crashed earlier point left
    point_settings = settings.model_copy(
        update={"database_url": f"sqlite:///{database.resolve()}", "weights_dir": directory / "weights"}
    )
    point = spec.for_epsilon(epsilon, f"{spec.run_name}-eps-{label}")
    engine = make_engine(point_settings)
    try:
        upgrade(engine)
        outcome = run_one(
            point, point_settings, engine, directory, executor=executor, progress=progress, label=f"ε={label}"
        )
    finally:
        engine.dispose()
    config = point.run_config()
    central = centralized(point, config) if baseline else None
    return {
        "epsilon": epsilon if math.isfinite(epsilon) else "inf",
        "dp": config.dp.value,
        "noise_multiplier": config.noise_multiplier if config.dp.local else None,
        "central_noise_multiplier": config.central_noise_multiplier if config.dp.central else None,
        "federated_metric": outcome.report["final"]["metric"],
        "max_epsilon_spent": max(
            (t["epsilon_spent"] for t in outcome.report["tenants"].values()), default=0.0
        ),
        "centralized_metric": central,
        "database": str(database),
    }


def organization_names(engine: Engine, seed: int) -> list[str]:
    with transaction(engine) as session:
        return list(
            session.scalars(select(Organization.name).where(Organization.name.like(f"{org_prefix(seed)}%")))
        )


def write_result(result: SimulationResult) -> Path:
    """report.json, tenants.csv, the plots and report.md in ``spec.out``; returns report.json's path."""
    from fl_client.tasks import get_task
    from simulations.outputs import write_report

    users = {s.name: (s.users, s.consenting) for s in result.main.setups}
    task = get_task(result.spec.task)
    return write_report(
        Path(result.spec.out),
        result.main.report,
        users,
        result.sweep,
        task.metric.name,
        metric_references(task, result.sweep),
    )


def nothing_trained_reason(report: dict[str, Any]) -> str | None:
    """Why a run trained no one (None when some contribution was accepted): its rounds' statuses, counted."""
    rounds = report.get("rounds", [])
    totals: dict[str, int] = {}
    for rnd in rounds:
        for status, count in rnd.get("statuses", {}).items():
            totals[status] = totals.get(status, 0) + int(count)
    if totals.get("accepted", 0) > 0:
        return None
    if not totals:
        return f"no tenant took part in any of the {len(rounds)} round(s)"
    counted = ", ".join(f"{count} {status}" for status, count in sorted(totals.items()))
    return f"no contribution was accepted in {len(rounds)} round(s) ({counted})"


def metric_references(task: Any, sweep: list[dict[str, Any]]) -> dict[str, float]:
    """Lines to judge a metric curve by: chance for a classifier, and the non-private points of a sweep."""
    references: dict[str, float] = {}
    label = getattr(task.encoder, "label", None)
    classes = getattr(label, "classes", None)
    if task.metric.higher_is_better and classes:
        references["chance"] = 1.0 / len(classes)
    for point in sweep:
        if point["epsilon"] != "inf":
            continue
        if point.get("federated_metric") is not None:
            references["federated, no DP"] = float(point["federated_metric"])
        if point.get("centralized_metric") is not None:
            references["centralized, no DP"] = float(point["centralized_metric"])
    return references
