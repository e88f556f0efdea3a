"""Benchmark: DP-SGD steps/s on a tenant node against the non-private baseline, per model type and method.

Each measurement is one full `fl_client.dp_training.train` call (encoding, Poisson sampling,
gradients, clipping, noise, update), divided into steps/s; the reported value is the median over
`--repeats` runs, interleaved across methods so that load from other processes on a shared machine
hits every method alike. Time is this process's CPU time by default (`--clock cpu`; torch runs on
one thread, so it equals wall time on an idle machine and ignores time spent descheduled while
other jobs share the cores); `--clock wall` measures wall time. The ratio is DP time / non-DP time per step (target <= 2x).

`--units record user` also measures user-level DP-SGD (each user's summed gradient clipped): the
records are re-assigned to users of `--records-per-user` records each, and users are sampled at the
same rate q, so a step sees the same expected number of records at both units. Each unit's DP time
is compared with the non-private run at the same unit, and user level with record level.

    .venv/bin/python bench/dp_sgd_node.py            # prints a Markdown table
    .venv/bin/python bench/dp_sgd_node.py --units record user --methods linear_ghost functorch
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import uuid

import torch

from fl_client.dp_training import train
from fl_client.per_sample import DEFAULT_METHOD, METHODS
from fl_client.tasks import get_task, task_names
from simulations.synthetic import tenant_records

NON_PRIVATE = "non_private"


def _time_train(
    task: str, records: list[dict[str, object]], method: str, args: argparse.Namespace, steps: int, unit: str
) -> float:
    """Seconds for one whole `train` call."""
    spec = get_task(task)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rate = args.batch / len(records)
    units = len(records) if unit == "record" else len({r["user_id"] for r in records})
    start = clock()
    train(
        spec,
        spec.initial_state(0),
        records,
        consented_user_ids=None,
        noise_multiplier=1.0,
        clip_norm=1.0,
        sample_rate=rate,
        steps=steps,
        lr=spec.defaults.lr,
        expected_batch_size=rate * units,
        unit=unit,
        seed=0,
        dp=method != NON_PRIVATE,
        method=method if method != NON_PRIVATE else DEFAULT_METHOD,
    )
    return clock() - start


def _records(task: str, n: int, per_user: int) -> list[dict[str, object]]:
    if task == "digits":
        rows = list(tenant_records("digits", seed=0, tenant_index=0, num_tenants=1))[:n]
    else:
        rows = tenant_records(task, seed=0, tenant_index=1, n_records=n)
    # Users of `per_user` records each (synthetic firms have 8-25 records per user).
    return [{**row, "user_id": str(uuid.UUID(int=1 + i // per_user))} for i, row in enumerate(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64, help="expected batch size qN")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--tasks", nargs="*", default=list(task_names()))
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--units", nargs="*", choices=("record", "user"), default=["record"])
    parser.add_argument("--records-per-user", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    methods = [NON_PRIVATE, *args.methods]
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
        f"N={args.records}, expected batch={args.batch} records, steps={args.steps}, median of {args.repeats}, "
        f"{args.clock} clock, units={'/'.join(args.units)}, {args.records_per_user} records per user"
    )
    print()
    print(
        "| model type | params | unit | method | steps/s (whole call) | DP / non-DP | steps/s (loop only) "
        "| DP / non-DP | loop vs record level |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for task in args.tasks:
        records = _records(task, args.records, args.records_per_user)
        params = sum(p.numel() for p in get_task(task).build_model().parameters())
        runs = [(u, m) for u in args.units for m in methods]
        whole: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
        fixed: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
        _time_train(task, records, NON_PRIVATE, args, args.steps, "record")  # warm-up: imports, caches
        for _ in range(args.repeats):
            for unit, method in runs:
                whole[(unit, method)].append(_time_train(task, records, method, args, args.steps, unit))
                fixed[(unit, method)].append(_time_train(task, records, method, args, 0, unit))
        call = {r: statistics.median(v) for r, v in whole.items()}
        # Loop only: the whole call less its fixed part (encoding, model build), measured with steps=0.
        loop = {r: max(call[r] - statistics.median(fixed[r]), 1e-9) for r in runs}
        for unit, method in runs:
            mark = " (default)" if method == DEFAULT_METHOD else ""
            base = (unit, NON_PRIVATE)
            versus = (
                f"{loop[(unit, method)] / loop[('record', method)]:.2f}x"
                if ("record", method) in loop
                else "-"
            )
            print(
                f"| {task} | {params} | {unit} | {method}{mark} | {args.steps / call[(unit, method)]:.0f} | "
                f"{call[(unit, method)] / call[base]:.2f}x | {args.steps / loop[(unit, method)]:.0f} | "
                f"{loop[(unit, method)] / loop[base]:.2f}x | {versus} |"
            )


if __name__ == "__main__":
    main()
