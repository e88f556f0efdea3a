"""Time per round: governed simulation against plain Flower FedAvg with the same clients, one process.

Both run on Flower's simulation engine (ray), 10 digits tenants, the same DP-SGD (fl_client's
``train``: z, q, C, steps), the same records. The plain side is Flower's ``FedAvg.start`` with a
ClientApp that trains the tenant's records without consent gate, ledger or validation. Also: time
from the start of ``simulate`` to the end of its first round (engine startup included).

    .venv/bin/python bench/simulation_round.py [--tenants 10] [--rounds 4] [--steps 50]

Scale (``--scale N``): per backend, two fresh processes on fresh databases run what ``accute-fl
simulate --tenants N --fraction S/N`` runs, the first with S tenants all sampled (``--fraction 1``),
the second with N tenants of which S are sampled per round; each reports preparation time, the
time of every round and its peak RSS (the ServerApp's process; Ray's workers are others). The
ratio is the median round time (rounds 2..R: round 1 includes Ray start-up) of the large run
over the small one. Target: ≤ 1.5x. Each run also reports the identity queries the server sent
(lazy identification: the sampled nodes and their replacements) and its time in identification
and in ``Governor.admit``.

    .venv/bin/python bench/simulation_round.py --scale 10000 [--sampled 10] [--rounds 3] [--steps 20]
        [--backends sqlite,postgresql] [--task digits] [--postgres URL] [--plain]

``--plain`` also runs plain Flower FedAvg (the same DP-SGD on the same records, no database, no
governance) at both sizes: the simulation engine's own cost of registered nodes. Every run uses the
delivery sweep the settings choose (``simulations/flower_delivery.py``); set
``ACCUTE_SIMULATION_NARROW_SWEEP=false`` to measure Flower 1.42's sweep over every node.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from aggregation.flwr_adapter import arrays_from_record, record_from_arrays
from fl_client.dp_training import evaluate, train
from fl_client.tasks import get_task
from schema.config import Settings
from schema.db import make_engine
from schema.migrate import upgrade
from simulations.federation import run_on_engine
from simulations.runner import simulate
from simulations.scenario import SimulationSpec
from simulations.synthetic import tenant_records


def plain(spec: SimulationSpec) -> list[float]:
    config = spec.run_config()
    task = get_task(spec.task)
    stamps: list[float] = []

    def records(pid: int) -> list[dict[str, object]]:
        return list(tenant_records(spec.task, seed=spec.seed, tenant_index=pid, num_tenants=spec.tenants))

    client = ClientApp()

    @client.train()
    def fit(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        state = {
            k: torch.from_numpy(np.array(v))
            for k, v in arrays_from_record(msg.content.array_records["arrays"]).items()
        }
        result = train(
            task,
            state,
            records(pid),
            consented_user_ids=None,
            noise_multiplier=config.noise_multiplier,
            clip_norm=config.clip_norm,
            sample_rate=config.sample_rate,
            steps=config.steps,
            lr=config.lr,
            seed=pid + 1,
        )
        arrays = record_from_arrays({k: v.detach().numpy() for k, v in result.state.items()})
        return Message(
            RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": result.num_examples})}),
            reply_to=msg,
        )

    @client.evaluate()
    def ev(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        state = {
            k: torch.from_numpy(np.array(v))
            for k, v in arrays_from_record(msg.content.array_records["arrays"]).items()
        }
        rows = records(pid)
        result = evaluate(task, state, rows, consented_user_ids=None)
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": len(rows), "accuracy": result.value})}),
            reply_to=msg,
        )

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        initial = record_from_arrays({k: v.numpy() for k, v in task.initial_state(config.seed).items()})

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            stamps.append(time.perf_counter())
            return MetricRecord({})

        # ``min_available_nodes``: round 1 samples once every simulated node has registered.
        FedAvg(
            fraction_train=spec.fraction, fraction_evaluate=spec.fraction, min_available_nodes=spec.tenants
        ).start(grid=grid, initial_arrays=initial, num_rounds=config.rounds, evaluate_fn=evaluate_fn)

    # The governed run's engine and delivery sweep (ACCUTE_SIMULATION_NARROW_SWEEP decides for both).
    run_on_engine(server, client, spec.tenants, narrow_sweep=Settings().simulation_narrow_sweep)
    return [b - a for a, b in itertools.pairwise(stamps[1:])]  # stamps[0]: round 0 (initial)


SCALE_CHILD = r"""
import json, logging, os, resource, sys, time
from pathlib import Path
url, tenants, sampled, rounds, steps, task, folder = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
    int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], Path(sys.argv[7]))
from schema.config import Settings
from schema.db import make_engine
from schema.migrate import upgrade
from simulations.runner import simulate
from simulations.scenario import SimulationSpec
logging.getLogger("flwr").setLevel(logging.ERROR)
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
settings = Settings(database_url=url, weights_dir=folder / "weights")
engine = make_engine(settings)
upgrade(engine)
engine.dispose()
marks = {"rounds": []}
# Instrumentation only (wrappers around the real methods): identity queries sent, and the
# server's time in identification and admission per run.
from fl_server.governance import Governor
from fl_server.strategy import GovernedStrategy
spent = {"identify_s": [0.0] * rounds, "admit_s": [], "asked": 0}
bind, admit, select = GovernedStrategy._bind, Governor.admit, GovernedStrategy._select_round
# Identification is counted for the round being selected (round r's runs during round r-1's
# evaluation, so it is not part of round r's own time).
selecting = {"round": 1}
def timed_select(self, grid, server_round, *args, **kwargs):
    selecting["round"] = server_round
    return select(self, grid, server_round, *args, **kwargs)
def timed_bind(self, grid, node_ids, timeout):
    node_ids = list(node_ids)
    before, started = self.identity_queries, time.perf_counter()
    try:
        return bind(self, grid, node_ids, timeout)
    finally:
        spent["identify_s"][selecting["round"] - 1] += time.perf_counter() - started
        spent["asked"] += self.identity_queries - before
def timed_admit(self, *args, **kwargs):
    started = time.perf_counter()
    try:
        return admit(self, *args, **kwargs)
    finally:
        spent["admit_s"].append(round(time.perf_counter() - started, 3))
GovernedStrategy._bind, Governor.admit, GovernedStrategy._select_round = timed_bind, timed_admit, timed_select
class Progress:
    def started(self, spec, config, label):
        marks["prepared"] = time.perf_counter()
        marks["rss_prepared_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    def round_done(self, record, max_epsilon):
        marks["rounds"].append(time.perf_counter())
    def finished(self):
        pass
spec = SimulationSpec(task=task, tenants=tenants, fraction=sampled / tenants, rounds=rounds, steps=steps,
                      out=str(folder / "out"), run_name="scale", dp="local", epsilon_cap=1000.0)
started = time.perf_counter()
result = simulate(spec, settings, progress=Progress())
stamps = [marks["prepared"], *marks["rounds"]]
print(json.dumps({
    "tenants": tenants, "fraction": sampled / tenants, "prepare_s": round(marks["prepared"] - started, 1),
    "round_s": [round(b - a, 2) for a, b in zip(stamps, stamps[1:])],
    "participants": [len(r["participants"]) for r in result.main.report["rounds"]],
    "identity_queries": spent["asked"], "identify_s": [round(x, 2) for x in spent["identify_s"]],
    "admit_s": spent["admit_s"],
    "rss_after_prepare_mb": round(marks["rss_prepared_mb"]),
    "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
}))
"""


PLAIN_CHILD = r"""
import json, logging, os, resource, sys
from pathlib import Path
url, tenants, sampled, rounds, steps, task, folder = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
    int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], Path(sys.argv[7]))
sys.path.insert(0, "bench")
logging.getLogger("flwr").setLevel(logging.ERROR)
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
from simulation_round import plain
from simulations.scenario import SimulationSpec
spec = SimulationSpec(task=task, tenants=tenants, fraction=sampled / tenants, rounds=rounds, steps=steps,
                      out=str(folder / "out"), run_name="plain", dp="local", epsilon_cap=1000.0)
rounds_s = plain(spec)
print(json.dumps({"plain_flower": True, "tenants": tenants, "fraction": sampled / tenants,
    "round_s": [round(r, 2) for r in rounds_s],
    "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def scale(args: argparse.Namespace) -> int:
    """Round time with ``--scale`` registered tenants against ``--sampled`` tenants, S sampled in both."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tenant_preparation import run_scale_child

    failed = False
    if args.plain:
        # Flower alone (FedAvg, the same DP-SGD, no database): what the engine's round costs at both sizes.
        plain_medians: dict[int, float] = {}
        for tenants in (args.sampled, args.scale):
            tail = [args.sampled, args.rounds, args.steps, args.task, "folder"]
            result = run_scale_child(PLAIN_CHILD, "sqlite", tenants, tail)
            if result is None:
                return 1
            plain_medians[tenants] = float(np.median(result["round_s"]))  # rounds 2..R already
        print(
            json.dumps(
                {"plain_flower_ratio": round(plain_medians[args.scale] / plain_medians[args.sampled], 3)}
            )
        )
    for backend in args.backends.split(","):
        if not backend:
            continue
        medians: dict[int, float] = {}
        for tenants in (args.sampled, args.scale):
            tail = [args.sampled, args.rounds, args.steps, args.task, "folder"]
            result = run_scale_child(SCALE_CHILD, backend, tenants, tail, postgres=args.postgres)
            if result is None:
                failed = True
                break
            medians[tenants] = float(np.median(result["round_s"][1:]))
        if len(medians) == 2:
            small, large = medians[args.sampled], medians[args.scale]
            print(
                json.dumps(
                    {
                        "backend": backend,
                        "round_s_median": {str(k): round(v, 2) for k, v in medians.items()},
                        "ratio": round(large / small, 3),
                    }
                ),
                flush=True,
            )
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scale", type=int, default=0, help="Registered tenants of the scale run (0: off).")
    parser.add_argument("--sampled", type=int, default=10)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--task", default="digits")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="With --scale: also plain Flower FedAvg at both sizes (no database).",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "ACCUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
        help="PostgreSQL database the scale runs create their schemas in (default: ACCUTE_TEST_POSTGRES_URL).",
    )
    args = parser.parse_args()
    if args.scale:
        raise SystemExit(scale(args))
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    work = Path(tempfile.mkdtemp(prefix="sim-bench-"))
    settings = Settings(database_url=f"sqlite:///{work / 'bench.db'}", weights_dir=work / "weights")
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    spec = SimulationSpec(
        tenants=args.tenants,
        rounds=args.rounds,
        steps=args.steps,
        noise_multiplier=1.0,
        epsilon_cap=1000.0,
        out=str(work / "out"),
        run_name="bench",
        dp="local",
    )
    started = time.perf_counter()
    result = simulate(spec, settings)
    governed_total = time.perf_counter() - started
    governed = result.main.round_seconds
    plain_rounds = plain(spec)
    g, p = float(np.median(governed)), float(np.median(plain_rounds))
    print(
        json.dumps(
            {
                "tenants": args.tenants,
                "rounds": args.rounds,
                "steps": args.steps,
                "governed_round_s_median": round(g, 3),
                "plain_round_s_median": round(p, 3),
                "ratio": round(g / p, 3),
                "first_round_after_s": round(result.main.seconds_to_first_round or 0, 2),
                "governed_total_s": round(governed_total, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
