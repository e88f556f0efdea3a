"""How long `accute-fl privacy audit` takes with the default trials, and where the time goes.

For each mechanism, interleaved over the repeats: the whole audit (``privacy.audit.run_audit`` with
the command's defaults: z = 1, q = 1, T = 1, 2,000 trials, delta = 1e-5), beside its baseline, the
mechanism alone (the same 2,000 runs without any statistics), so the difference is the audit's own
cost (threshold search and Clopper-Pearson). Prints medians of wall and CPU seconds and ms per trial.

    .venv/bin/python bench/privacy_audit.py [--mechanism dp-sgd central] [--repeats 3] [--trials 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from privacy import audit  # noqa: E402


def timed(run: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def mechanism_only(mechanism: str, trials: int) -> Callable[[], object]:
    def run() -> None:
        make = audit.dp_sgd_runner if mechanism == "dp-sgd" else audit.central_runner
        one = make(1.0, 1.0, 1)
        for i in range(trials):
            one(i % 2 == 0)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mechanism", nargs="+", default=list(audit.MECHANISMS), choices=audit.MECHANISMS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=audit.DEFAULT_TRIALS)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for mechanism in args.mechanism:
        # Warm-up: imports, the task, scipy, torch's first calls.
        audit.run_audit(mechanism, trials=audit.MIN_TRIALS)
        whole: list[tuple[float, float]] = []
        alone: list[tuple[float, float]] = []
        bounds: list[float] = []
        for _ in range(args.repeats):
            results: list[audit.AuditResult] = []
            whole.append(
                timed(lambda m=mechanism, r=results: r.append(audit.run_audit(m, trials=args.trials)))
            )
            bounds.append(results[0].epsilon_lower_bound)
            alone.append(timed(mechanism_only(mechanism, args.trials)))
        for name, rows in (("audit", whole), ("mechanism alone", alone)):
            wall = statistics.median(w for w, _ in rows)
            cpu = statistics.median(c for _, c in rows)
            print(
                f"{mechanism:8s} {name:16s} median wall {wall:6.2f} s  CPU {cpu:6.2f} s  "
                f"{1000 * wall / args.trials:5.2f} ms/trial"
            )
        print(f"{mechanism:8s} lower bounds: {', '.join(f'{b:.2f}' for b in bounds)}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
