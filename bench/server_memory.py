"""Peak memory of the governed server process against the number of registered tenants.

For each N, a fresh process runs ``simulations.runner.simulate`` (what ``accute-fl simulate``
runs: bulk tenant preparation, then the governed ServerApp on Flower's simulation engine with N
SuperNodes, of which ``--sampled`` train per round) on a fresh SQLite file. It reports the
preparation time, the per-round times, and the process's peak RSS after preparation and at the
end (the ServerApp runs in this process; Ray's workers are other processes, not counted).

    .venv/bin/python bench/server_memory.py [--tenants 1000,10000] [--sampled 10] [--rounds 2] [--steps 5]
        [--task time_estimation]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, logging, os, resource, sys, time
from pathlib import Path
tenants, sampled, rounds, steps, task, folder = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                                 int(sys.argv[4]), sys.argv[5], Path(sys.argv[6]))
from schema.config import Settings
from schema.db import make_engine
from schema.migrate import upgrade
from simulations.runner import simulate
from simulations.scenario import SimulationSpec
logging.getLogger("flwr").setLevel(logging.ERROR)
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
settings = Settings(database_url=f"sqlite:///{folder / 'sim.db'}", weights_dir=folder / "weights")
engine = make_engine(settings)
upgrade(engine)
engine.dispose()
marks = {}
class Progress:
    def started(self, spec, config, label):
        marks["prepared"] = time.perf_counter()
        marks["rss_prepared_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        marks["rounds"] = []
    def round_done(self, record, max_epsilon):
        marks["rounds"].append(time.perf_counter())
    def finished(self):
        pass
spec = SimulationSpec(task=task, tenants=tenants, fraction=sampled / tenants, rounds=rounds, steps=steps,
                      out=str(folder / "out"), run_name="memory", dp="local", epsilon_cap=1000.0)
rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
simulate(spec, settings, progress=Progress())
stamps = [marks["prepared"], *marks["rounds"]]
print(json.dumps({
    "task": task, "tenants": tenants, "sampled_per_round": sampled, "rounds": rounds, "steps": steps,
    "prepare_s": round(marks["prepared"] - started, 1),
    "round_s": [round(b - a, 1) for a, b in zip(stamps, stamps[1:])],
    "rss_imports_mb": round(rss_start), "rss_after_prepare_mb": round(marks["rss_prepared_mb"]),
    "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", default="1000,10000")
    parser.add_argument("--sampled", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--task", default="time_estimation", help="digits allows at most 1797 tenants.")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    failed = False
    for tenants in (int(n) for n in args.tenants.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            argv = [
                sys.executable,
                "-c",
                CHILD,
                str(tenants),
                str(args.sampled),
                str(args.rounds),
                str(args.steps),
            ]
            done = subprocess.run(
                [*argv, folder], env=env, cwd=ROOT, capture_output=True, text=True, check=False
            )
        if done.returncode != 0:
            print(f"{tenants}: failed\n{done.stderr[-3000:]}")
            failed = True
            continue
        print(done.stdout.strip().splitlines()[-1], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
