"""Round time against registered tenants, in process: N bound tenants, the same S sampled per round.

The governed strategy (``fl_server.app``'s inner strategy, ``GovernedStrategy``, the real ClientApp)
runs on the in-process grid of the tests (``tests/fl_server/grid_double.LocalGrid``: no Ray, no
gRPC), so what changes between N = S and N = 10,000 is only what the server does per registered
tenant. Each N is a fresh process on a fresh database (SQLite file or a new PostgreSQL schema);
it reports the preparation time, every round's time and ``Governor.admit``'s, and peak RSS. The
ratio is the median round (rounds 2..R: round 1 binds every node) of the largest N over N = S.

    .venv/bin/python bench/admission_scale.py [--tenants 10,1000,10000] [--sampled 10] [--rounds 4]
        [--steps 5] [--backends sqlite,postgresql] [--task time_estimation]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tenant_preparation import run_scale_child

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, logging, resource, sys, time
from collections import Counter
from pathlib import Path
url, tenants, sampled, rounds, steps, task, folder = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
    int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], Path(sys.argv[7]))
from aggregation.flwr_adapter import record_from_arrays
from aggregation.weights_store import WeightsStore
from fl_client.app import make_client_app
from fl_client.tasks import get_task
from fl_server.app import inner_strategy
from fl_server.config import RunConfig
from fl_server.governance import Governor
from fl_server.strategy import GovernedStrategy
from schema.config import Settings
from schema.db import make_engine
from schema.migrate import upgrade
from simulations.federation import prepare_federation
from tests.fl_server.grid_double import LocalGrid
logging.getLogger("flwr").setLevel(logging.ERROR)
engine = make_engine(url)
upgrade(engine)
started = time.perf_counter()
prepare_federation(engine, task=task, tenants=tenants, seed=7, manifest_path=folder / "m.json",
                   epsilon_caps={i: 1000.0 for i in range(tenants)})
prepare_s = time.perf_counter() - started
nodes = json.loads((folder / "m.json").read_text())["tenants"]
grid = LocalGrid(make_client_app(), {1000 + i: node for i, node in enumerate(nodes)})
config = RunConfig(run_name="scale", task=task, rounds=rounds, fraction=sampled / tenants, dp="local",
                   noise_multiplier=1.0, sample_rate=0.1, steps=steps, lr=0.5, round_timeout_s=600)
governor = Governor(engine, config, Settings(database_url=url))
admit_s, stamps = [], []
admit = governor.admit
def timed(*args, **kwargs):
    t = time.perf_counter()
    result = admit(*args, **kwargs)
    admit_s.append(time.perf_counter() - t)
    return result
governor.admit = timed
strategy = GovernedStrategy(inner_strategy(config), governor, WeightsStore(folder / "w"),
                            on_round=lambda record: stamps.append(time.perf_counter()))
initial = {k: v.numpy() for k, v in get_task(task).initial_state(1).items()}
begin = time.perf_counter()
result = strategy.start(grid, record_from_arrays(initial))
stamps = [begin, *stamps]
print(json.dumps({
    "tenants": tenants, "prepare_s": round(prepare_s, 1),
    "round_s": [round(b - a, 3) for a, b in zip(stamps, stamps[1:])],
    "admit_ms": [round(1000 * a, 1) for a in admit_s],
    "statuses": [dict(Counter(r.statuses.values())) for r in result.rounds],
    "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", default="10,1000,10000")
    parser.add_argument("--sampled", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--task", default="time_estimation")
    args = parser.parse_args()
    failed = False
    for backend in args.backends.split(","):
        medians: dict[int, float] = {}
        for tenants in (int(n) for n in args.tenants.split(",")):
            tail = [args.sampled, args.rounds, args.steps, args.task, "folder"]
            result = run_scale_child(CHILD, backend, tenants, tail)
            if result is None:
                failed = True
                continue
            medians[tenants] = statistics.median(result["round_s"][1:])
        if len(medians) > 1:
            base = medians[min(medians)]
            ratios = {str(n): round(m / base, 3) for n, m in medians.items()}
            print(json.dumps({"backend": backend, "ratio_to_smallest": ratios}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
