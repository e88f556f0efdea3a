"""Benchmark: DP-SGD steps/s on a tenant node against the non-private baseline, per model type and method.

Each measurement is one full `fl_client.dp_training.train` call (encoding, Poisson sampling,
gradients, clipping, noise, update), divided into steps/s; the reported value is the median over
`--repeats` runs, interleaved across methods so that load from other processes on a shared machine
hits every method alike. Time is this process's CPU time by default (`--clock cpu`; torch runs on
one thread, so it equals wall time on an idle machine and ignores time spent descheduled while
other jobs share the cores); `--clock wall` measures wall time. The ratio is DP time / non-DP time per step (target <= 2x).

    .venv/bin/python bench/dp_sgd_node.py            # prints a Markdown table
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fl_client.dp_training import train
from fl_client.per_sample import DEFAULT_METHOD, METHODS
from fl_client.tasks import get_task, task_names
from simulations.synthetic import tenant_records

NON_PRIVATE = "non_private"


def _time_train(
    task: str, records: list[dict[str, object]], method: str, args: argparse.Namespace, steps: int
) -> float:
    """Seconds for one whole `train` call."""
    spec = get_task(task)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    start = clock()
    train(
        spec,
        spec.initial_state(0),
        records,
        consented_user_ids=None,
        noise_multiplier=1.0,
        clip_norm=1.0,
        sample_rate=args.batch / len(records),
        steps=steps,
        lr=spec.defaults.lr,
        seed=0,
        dp=method != NON_PRIVATE,
        method=method if method != NON_PRIVATE else DEFAULT_METHOD,
    )
    return clock() - start


def _records(task: str, n: int) -> list[dict[str, object]]:
    if task == "digits":
        return list(tenant_records("digits", seed=0, tenant_index=0, num_tenants=1))[:n]
    return tenant_records(task, seed=0, tenant_index=1, n_records=n)


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    methods = [NON_PRIVATE, *args.methods]
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
        f"N={args.records}, expected batch={args.batch}, steps={args.steps}, median of {args.repeats}, "
        f"{args.clock} clock"
    )
    print()
    print(
        "| model type | params | method | steps/s (whole call) | DP / non-DP | steps/s (loop only) | DP / non-DP |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for task in args.tasks:
        records = _records(task, args.records)
        params = sum(p.numel() for p in get_task(task).build_model().parameters())
        whole: dict[str, list[float]] = {m: [] for m in methods}
        fixed: dict[str, list[float]] = {m: [] for m in methods}
        _time_train(task, records, NON_PRIVATE, args, args.steps)  # warm-up: imports, caches, allocator
        for _ in range(args.repeats):
            for method in methods:
                whole[method].append(_time_train(task, records, method, args, args.steps))
                fixed[method].append(_time_train(task, records, method, args, 0))
        call = {m: statistics.median(v) for m, v in whole.items()}
        # Loop only: the whole call less its fixed part (encoding, model build), measured with steps=0.
        loop = {m: max(call[m] - statistics.median(fixed[m]), 1e-9) for m in methods}
        for method in methods:
            mark = " (default)" if method == DEFAULT_METHOD else ""
            print(
                f"| {task} | {params} | {method}{mark} | {args.steps / call[method]:.0f} | "
                f"{call[method] / call[NON_PRIVATE]:.2f}x | {args.steps / loop[method]:.0f} | "
                f"{loop[method] / loop[NON_PRIVATE]:.2f}x |"
            )


if __name__ == "__main__":
    main()
