"""Benchmark: wall time per round of the governed strategy against plain Flower FedAvg.

Both run in Flower's simulation engine (``run_simulation``) with the same ClientApp
(``fl_client.app``: same data, same DP-SGD training), the same tenants, rounds and DP parameters.

- governed: ``fl_server.app.make_server_app`` — identification and binding, consent gate and budget
  filter, consent snapshots and ledger charges at dispatch (one transaction per round), per-reply
  validation, contribution rows, streaming
  aggregation, weights committed to the store and the round committed to the database;
- plain: Flower's ``FedAvg.start`` with the same instruction attached to each node's train message
  (computed once, before round 1: no consent or budget checks, no validation, no database), its
  grid polling for replies every ``PULL_INTERVAL_S`` like the governed strategy (Flower's default
  0.1 s would quantize the baseline's rounds and hide or inflate the difference); ``--pull-interval``
  sets both sides' interval (the governed strategy's ``fl_server.strategy.PULL_INTERVAL_S``: the
  ServerApp runs in a thread of this process).

A round's time is from the end of the previous round (its evaluation) to the end of this one; the
reported value is the median over rounds 2..R (round 1 includes worker start-up), per repeat, and
the median over repeats, which alternate plain / governed so shared-machine load hits both alike.

    .venv/bin/python bench/governance_overhead.py --tenants 4 --rounds 6 --repeats 2
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from aggregation.flwr_adapter import record_from_arrays
from fl_client import protocol
from fl_client.app import MANIFEST_ENV, make_client_app
from fl_client.protocol import EvalInstruction, NodeIdentity, TrainInstruction
from fl_client.tasks import get_task
from fl_server import strategy as governed_strategy
from fl_server.app import make_server_app
from fl_server.config import RunConfig
from fl_server.strategy import PULL_INTERVAL_S, RoundRecord
from schema.config import Settings
from schema.db import make_engine
from schema.migrate import upgrade
from simulations.federation import prepare_federation, run_on_engine
from simulations.synthetic import firm_user_ids

Mark = tuple[float, float]


def mark() -> Mark:
    return time.perf_counter(), time.process_time()


class InstructedFedAvg(FedAvg):
    """Plain FedAvg; each train/evaluate message carries the node's fixed instruction."""

    def __init__(self, instructions: dict[int, TrainInstruction], task: str, marks: list[Mark]) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_available_nodes=len(instructions),
            weighted_by_key=protocol.NUM_EXAMPLES,
        )
        self.instructions = instructions
        self.task = task
        self.marks = marks

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            content = RecordDict(dict(message.content.items()))
            content[protocol.INSTRUCTION] = self.instructions[message.metadata.dst_node_id].to_record()
            message.content = content
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        for message in messages:
            instruction = self.instructions[message.metadata.dst_node_id]
            content = RecordDict(dict(message.content.items()))
            content[protocol.INSTRUCTION] = EvalInstruction(
                run_id=instruction.run_id,
                server_round=server_round,
                task=self.task,
                organization_id=instruction.organization_id,
                user_ids=instruction.user_ids,
                dp=instruction.dp,
                holdout_fraction=instruction.holdout_fraction,
            ).to_record()
            message.content = content
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Uniform weights, as the governed strategy uses in DP runs: a DP node releases no record
        # count (it reports 0), and FedAvg weighting by it divided by zero.
        uniform = []
        for reply in replies:
            if not reply.has_error():
                content = RecordDict(dict(reply.content.items()))
                content[protocol.METRICS] = MetricRecord({protocol.NUM_EXAMPLES: 1})
                reply.content = content
            uniform.append(reply)
        return super().aggregate_train(server_round, uniform)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        # DP nodes keep their metric (they reply with 0 examples): nothing to aggregate, as in the
        # governed strategy's DP runs.
        list(replies)
        self.marks.append(mark())
        return None


def plain_server_app(config: RunConfig, seed: int, marks: list[Mark], pull_interval: float) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # Poll as often as the governed strategy does, so only governance differs between the two.
        if hasattr(grid, "pull_interval"):
            grid.pull_interval = pull_interval
        while len(node_ids := list(grid.get_node_ids())) < config.min_nodes:
            time.sleep(0.2)
        asks = [Message(RecordDict({}), dst_node_id=n, message_type="query.identify") for n in node_ids]
        instructions: dict[int, TrainInstruction] = {}
        for reply in grid.send_and_receive(asks, timeout=config.round_timeout_s):
            identity = NodeIdentity.from_record(protocol.config_of(reply.content, protocol.IDENTITY))
            index = int(identity.tenant.rsplit("-", 1)[1])
            instructions[reply.metadata.src_node_id] = TrainInstruction(
                run_id="plain",
                server_round=0,
                task=config.task,
                organization_id=identity.organization_id,
                consent_digest="",
                user_ids=tuple(firm_user_ids(seed, index)),
                dp=config.dp.local,
                noise_multiplier=config.noise_multiplier,
                clip_norm=config.clip_norm,
                sample_rate=config.sample_rate,
                steps=config.steps,
                lr=config.lr,
                seed=config.seed,
                unit=config.privacy_unit,
                expected_batch_size=config.expected_batch_size or config.sample_rate * 10,
                epsilon_cap=float("inf"),
                delta=config.delta,
                holdout_fraction=0.0,
            )
        initial = {k: v.numpy() for k, v in get_task(config.task).initial_state(config.seed).items()}
        strategy = InstructedFedAvg(instructions, config.task, marks)
        marks.append(mark())
        strategy.start(
            grid, record_from_arrays(initial), num_rounds=config.rounds, timeout=config.round_timeout_s
        )

    return app


def per_round(marks: list[Mark]) -> tuple[list[float], list[float]]:
    """Wall seconds and this process's CPU seconds (the ServerApp thread, the simulation engine's
    threads; not the Ray workers that train) of each round."""
    pairs = list(itertools.pairwise(marks))
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


def run_once(
    kind: str, args: argparse.Namespace, repeat: int, workdir: Path
) -> tuple[list[float], list[float]]:
    folder = workdir / f"{kind}-{repeat}"
    folder.mkdir()
    # A cap no run here reaches: both strategies train every tenant every round.
    settings = Settings(
        database_url=f"sqlite:///{folder / 'accute.db'}",
        weights_dir=folder / "weights",
        default_epsilon_cap=args.epsilon_cap,
    )
    engine = make_engine(settings)
    upgrade(engine)
    manifest = folder / "manifest.json"
    prepare_federation(engine, task=args.task, tenants=args.tenants, seed=args.seed, manifest_path=manifest)
    engine.dispose()
    config = RunConfig(
        run_name=f"bench-{kind}-{repeat}",
        task=args.task,
        rounds=args.rounds,
        dp="local",
        steps=args.steps,
        sample_rate=0.1,
        noise_multiplier=1.1,
        lr=0.5,
        seed=args.seed,
        min_nodes=args.tenants,
        round_timeout_s=600,
    )
    os.environ[MANIFEST_ENV] = str(manifest)
    marks: list[Mark] = []
    if kind == "governed":

        def on_round(_: RoundRecord) -> None:
            marks.append(mark())

        server = make_server_app(config, settings, on_round)
        marks.append(mark())
    else:
        server = plain_server_app(config, args.seed, marks, args.pull_interval)
    # Both kinds on what `simulate` runs: the same engine, backend and delivery sweep.
    run_on_engine(server, make_client_app(), args.tenants, narrow_sweep=settings.simulation_narrow_sweep)
    return per_round(marks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="digits")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epsilon-cap", type=float, default=1000.0)
    parser.add_argument(
        "--pull-interval",
        type=float,
        default=PULL_INTERVAL_S,
        help="seconds between reply polls, both sides (default: fl_server.strategy.PULL_INTERVAL_S)",
    )
    args = parser.parse_args()
    governed_strategy.PULL_INTERVAL_S = args.pull_interval
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    results: dict[str, list[float]] = {"plain": [], "governed": []}
    cpu_results: dict[str, list[float]] = {"plain": [], "governed": []}
    rounds_seen: dict[str, list[list[float]]] = {"plain": [], "governed": []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for kind in ("plain", "governed") if repeat % 2 == 0 else ("governed", "plain"):
                times, cpu = run_once(kind, args, repeat, Path(tmp))
                rounds_seen[kind].append(times)
                results[kind].append(statistics.median(times[1:] or times))
                cpu_results[kind].append(statistics.median(cpu[1:] or cpu))
    plain, governed = statistics.median(results["plain"]), statistics.median(results["governed"])
    print(
        f"task={args.task} tenants={args.tenants} rounds={args.rounds} steps={args.steps} dp=local "
        f"repeats={args.repeats} pull_interval={args.pull_interval:g}s cpus={os.cpu_count()} "
        f"python={platform.python_version()} load_average={load_before:.2f}->{os.getloadavg()[0]:.2f}"
    )
    for kind in ("plain", "governed"):
        print(
            f"{kind} per-round seconds by repeat: {[[round(t, 2) for t in ts] for ts in rounds_seen[kind]]}"
        )
    print()
    plain_cpu, governed_cpu = (
        statistics.median(cpu_results["plain"]),
        statistics.median(cpu_results["governed"]),
    )
    print("| strategy | median s/round (rounds 2..R) | server process CPU s/round |")
    print("|---|---|---|")
    print(f"| plain FedAvg (Flower) | {plain:.3f} | {plain_cpu:.3f} |")
    print(f"| governed (consent, budget, validation, ledger, commit) | {governed:.3f} | {governed_cpu:.3f} |")
    print(
        f"| ratio governed / plain | {governed / plain:.3f}x (target <= 1.15x) | {governed_cpu / plain_cpu:.2f}x |"
    )


if __name__ == "__main__":
    main()
