"""The sweep that chooses the digits DP defaults (issue 18): held-out accuracy of record-level local DP.

Digits, 8 tenants sharing the 1,437 training images, each round every tenant runs ``steps`` DP-SGD
steps (Poisson rate ``sample_rate``, clip ``clip``, learning rate ``lr``) and the server averages
the updates (uniform weights, as the governed strategy does in DP runs). The noise multiplier is
never a knob: it is the smallest one whose whole run (``rounds x steps`` steps) fits the target ε
at δ = 1e-5 (``SimulationSpec.run_config`` → ``privacy.accounting.noise_multiplier_for``), so the
ε a point reports is the ε of the run per tenant, all rounds included.

Two engines evaluate a point:

- ``governed``: ``simulations.runner.simulate`` on a fresh SQLite file with the in-process grid
  (``tests/fl_server/grid_double.py``: the real ServerApp, ClientApp, consent gate, ledger,
  validation; only Flower's transport replaced). The ε reported is the ledger's
  (``report.json`` ``tenants[*].epsilon_run``). ~4 s of governance per round on this machine.
- ``direct``: the same ``fl_client.dp_training.train`` on the same records (each tenant's
  non-held-out users, ``simulations.heldout.training_records``), the same z, expected batch size
  and initial model, averaged in the same way, measured on the same server test set; no
  database, no messages. Used for the coarse and refined grids (≈ 10x faster); every chosen
  point is confirmed with ``governed``.

Each point also trains the central DP-SGD baseline (``simulations.baseline.centralized``): the
pooled training records, the same (z, q, rounds x steps) — hence the same ε per record — with
its own step size from the pooled expected batch.

    nice -n 10 .venv/bin/python bench/dp_quality_sweep.py --engine direct --epsilons 3,8 \\
        --grid "steps=5,10,20;sample_rate=0.25,0.5,1.0;lr=0.5,1,2;rounds=10,20" --seeds 1

Writes ``--out``.json and ``--out``.csv (one row per point x seed) and prints a table of medians.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TENANTS = 8
DELTA = 1e-5
KNOBS = ("rounds", "steps", "sample_rate", "lr", "clip")


@dataclass(frozen=True)
class Point:
    epsilon: float
    rounds: int
    steps: int
    sample_rate: float
    lr: float
    clip: float


def spec_for(point: Point, seed: int, out: str = "unused") -> Any:
    from simulations.scenario import SimulationSpec

    return SimulationSpec(
        run_name=f"sweep-s{seed}",
        task="digits",
        tenants=TENANTS,
        rounds=point.rounds,
        steps=point.steps,
        sample_rate=point.sample_rate,
        lr=point.lr,
        clip=point.clip,
        dp="local",
        target_epsilon=point.epsilon,
        delta=DELTA,
        seed=seed,
        out=out,
        fresh_tenants=True,
    )


def run_direct(point: Point, seed: int) -> dict[str, Any]:
    """The federation's arithmetic without its governance: same train(), same records, same z."""
    import torch

    from fl_client.dp_training import evaluate, train
    from fl_client.tasks import get_task
    from privacy.accounting import mechanism_epsilon
    from simulations.heldout import held_out_records, training_records

    spec = spec_for(point, seed)
    config = spec.run_config()
    task = get_task(spec.task)
    ebs = config.expected_batch_size_for(0)
    per_tenant = []
    for index in range(spec.tenants):
        per_tenant.append(_tenant_training_records(spec, index, config.holdout_fraction))
    state = task.initial_state(config.seed)
    for _ in range(config.rounds):
        deltas = [
            train(
                task,
                state,
                records,
                consented_user_ids=None,
                noise_multiplier=config.noise_multiplier,
                clip_norm=config.clip_norm,
                sample_rate=config.sample_rate,
                steps=config.steps,
                lr=config.lr,
                expected_batch_size=ebs,
                dp=True,
            ).delta
            for records in per_tenant
        ]
        state = {k: v + torch.stack([d[k] for d in deltas]).mean(dim=0) for k, v in state.items()}
    accuracy = float(evaluate(task, state, held_out_records(spec), consented_user_ids=None).value)
    epsilon = mechanism_epsilon(
        config.noise_multiplier, config.sample_rate, config.rounds * config.steps, DELTA
    )
    assert len(training_records(spec, config.holdout_fraction)) == sum(len(r) for r in per_tenant)
    return {"federated": accuracy, "epsilon_run": epsilon, "z": config.noise_multiplier, "ebs": ebs}


def _tenant_training_records(spec: Any, index: int, holdout_fraction: float) -> list[dict[str, Any]]:
    from simulations.heldout import tenant_training_records

    return tenant_training_records(spec, index, holdout_fraction)


def run_governed(point: Point, seed: int) -> dict[str, Any]:
    """The real governed run (in-process grid, fresh SQLite); ε from the ledger's report."""
    from schema.config import Settings
    from schema.db import make_engine
    from schema.migrate import upgrade
    from simulations.runner import simulate
    from tests.simulations.conftest import in_process

    with tempfile.TemporaryDirectory() as directory:
        database = Path(directory) / "sweep.sqlite"
        engine = make_engine(Settings(database_url=f"sqlite:///{database}"))
        upgrade(engine)
        engine.dispose()
        settings = Settings(database_url=f"sqlite:///{database}", weights_dir=Path(directory) / "w")
        result = simulate(spec_for(point, seed, f"{directory}/out"), settings, executor=in_process)
    report = result.main.report
    return {
        "federated": report["final"]["test_metric"],
        "epsilon_run": max(t["epsilon_run"] for t in report["tenants"].values()),
        "z": result.config.noise_multiplier,
        "ebs": result.config.expected_batch_size,
    }


def run_central(point: Point, seed: int) -> float:
    from simulations.baseline import centralized

    spec = spec_for(point, seed)
    return centralized(spec, spec.run_config())


def parse_grid(text: str) -> dict[str, list[float]]:
    grid: dict[str, list[float]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in (*KNOBS, "lrc"):
            raise SystemExit(f"--grid: unknown knob '{key}'; use {', '.join(KNOBS)} or lrc")
        grid[key] = [float(v) for v in values.split(",") if v.strip()]
    return grid


def points(epsilons: list[float], grid: dict[str, list[float]], base: Point) -> list[Point]:
    keys = list(grid)
    out = []
    for epsilon in epsilons:
        for values in itertools.product(*(grid[k] for k in keys)):
            changes: dict[str, Any] = dict(zip(keys, values, strict=True))
            for integer in ("rounds", "steps"):
                if integer in changes:
                    changes[integer] = int(changes[integer])
            if "lrc" in changes:
                # lr x clip: the largest step a clipped gradient can take, kept while the clip varies.
                changes["lr"] = changes.pop("lrc") / changes.get("clip", base.clip)
            out.append(Point(**(asdict(base) | changes | {"epsilon": epsilon})))
    return out


def listed(epsilons: list[float], text: str) -> list[Point]:
    """``"10,3,1,4,0.5;…"`` (rounds, steps, sample rate, lr, clip) at every ε."""
    out = []
    for epsilon in epsilons:
        for item in text.split(";"):
            rounds, steps, q, lr, clip = (v.strip() for v in item.split(","))
            out.append(Point(epsilon, int(rounds), int(steps), float(q), float(lr), float(clip)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("direct", "governed"), default="direct")
    parser.add_argument("--epsilons", default="3,8")
    parser.add_argument(
        "--grid",
        default="",
        help="knob=v1,v2;… over rounds, steps, sample_rate, lr, clip, or lrc (lr = lrc / clip)",
    )
    parser.add_argument(
        "--points", default="", help="explicit points instead of a grid: rounds,steps,q,lr,clip;…"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sample-rate", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--no-central", action="store_true", help="skip the central DP-SGD baseline")
    parser.add_argument("--budget-s", type=float, default=1800.0, help="stop starting points after this")
    parser.add_argument("--out", default="bench/results/dp_quality")
    parser.add_argument(
        "--plot", default="", help="no runs: draw the accuracy-ε curve of the --out JSON into this PNG"
    )
    args = parser.parse_args()
    if args.plot:
        plot_curve(json.loads(Path(args.out).with_suffix(".json").read_text()), Path(args.plot))
        return

    import logging

    import torch

    # One intra-op thread: the models are tiny, and on a shared 2-core machine a second thread only
    # waits for a core (measured 8x slower per DP-SGD step under load).
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    base = Point(0.0, args.rounds, args.steps, args.sample_rate, args.lr, args.clip)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = points(epsilons, parse_grid(args.grid), base) if not args.points else listed(epsilons, args.points)
    runner = run_direct if args.engine == "direct" else run_governed
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    print(f"{len(todo)} points x {len(seeds)} seeds, engine {args.engine}", flush=True)
    for point in todo:
        for seed in seeds:
            if time.perf_counter() - started > args.budget_s:
                print("time budget spent; stopping", flush=True)
                break
            t0 = time.perf_counter()
            row: dict[str, Any] = asdict(point) | {"seed": seed, "engine": args.engine}
            row |= runner(point, seed)
            row["central"] = None if args.no_central else run_central(point, seed)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(
                f"ε={point.epsilon:g} R={point.rounds} K={point.steps} q={point.sample_rate:g} "
                f"lr={point.lr:g} C={point.clip:g} seed={seed}: z={row['z']:.3f} "
                f"fed={row['federated']:.3f} central={row['central'] if row['central'] is None else round(row['central'], 3)} "
                f"ε_run={row['epsilon_run']:.3f} ({row['seconds']} s)",
                flush=True,
            )
            write(rows, Path(args.out))  # after every point: a killed sweep keeps what it measured
    write(rows, Path(args.out))
    print_table(rows)


def write(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.tmp")
    partial.write_text(json.dumps(rows, indent=1))
    partial.replace(out.with_suffix(".json"))  # whole or not at all, even if the sweep is killed
    if rows:
        with out.with_suffix(".csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    """Medians over seeds per point, best federated accuracy first within each ε."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in ("epsilon", *KNOBS)), []).append(row)
    print("| ε | rounds | steps | q | lr | C | z | seeds | federated (median) | central (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ordered = sorted(
        groups.items(), key=lambda kv: (kv[0][0], -statistics.median(r["federated"] for r in kv[1]))
    )
    for key, group in ordered:
        fed = statistics.median(r["federated"] for r in group)
        centrals = [r["central"] for r in group if r["central"] is not None]
        central = f"{statistics.median(centrals):.3f}" if centrals else "-"
        eps, rounds, steps, q, lr, clip = key
        print(
            f"| {eps:g} | {rounds} | {steps} | {q:g} | {lr:g} | {clip:g} | {group[0]['z']:.2f} | "
            f"{len(group)} | {fed:.3f} | {central} |"
        )


def plot_curve(rows: list[dict[str, Any]], png: Path) -> None:
    """Median held-out accuracy against ε, federated local DP beside central DP-SGD, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epsilons = sorted({r["epsilon"] for r in rows})
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, label, marker in (
        ("federated", f"federated, local DP ({TENANTS} tenants)", "o"),
        ("central", "central DP-SGD, pooled", "s"),
    ):
        medians = [statistics.median(r[key] for r in rows if r["epsilon"] == e) for e in epsilons]
        axes.plot(epsilons, medians, marker=marker, label=f"{label}, median")
        for e in epsilons:
            values = [r[key] for r in rows if r["epsilon"] == e]
            axes.scatter([e] * len(values), values, s=8, alpha=0.4, color=axes.lines[-1].get_color())
    axes.axhline(0.1, color="grey", linestyle=":", label="chance")
    for e, target in ((3.0, 0.80), (8.0, 0.88)):
        axes.plot([e], [target], marker="_", markersize=18, color="red")
    axes.plot([], [], marker="_", linestyle="", color="red", label="issue 18 target")
    axes.set_xscale("log")
    axes.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
    axes.minorticks_off()
    axes.set_xlabel("ε per record, whole run (δ = 1e-5)")
    axes.set_ylabel("held-out accuracy (360 test digits)")
    axes.set_ylim(0, 1)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=120)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
