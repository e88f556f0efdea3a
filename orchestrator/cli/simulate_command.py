"""`accute-fl simulate`: a governed DP federation of synthetic tenants on Flower's simulation engine.

Values come from ``--config FILE.toml`` (keys as the flags, dashes or underscores, optionally
under ``[simulation]``) and flags override them. Everything is validated before anything is
written. The run goes to the configured database (ACCUTE_DATABASE_URL; the SQLite file by
default, migrated if it is new or empty). Consent-scenario events (``--withdraw``, ``--erasure``)
are applied after the given round from the server's per-round callback, so the next round's
consent gate sees them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fl_server.config import RunConfig
from fl_server.round_epsilon import RoundEpsilon
from fl_server.strategy import RoundRecord
from orchestrator.cli.context import engine as cli_engine
from orchestrator.cli.context import load_settings
from schema.errors import InvalidInputError, NothingTrainedError
from schema.migrate import current_revision, upgrade
from schema.timeutil import utcnow
from simulations.runner import (
    SimulationResult,
    check_new_run,
    nothing_trained_reason,
    simulate,
    write_result,
)
from simulations.scenario import SimulationSpec, build_spec, load_toml, parse_caps, parse_sweep


def _default(field: str) -> str:
    value = SimulationSpec.model_fields[field].default
    return str(getattr(value, "value", value))


def _choices(field: str) -> str:
    from simulations.synthetic import SYNTHETIC_TASKS

    return ", ".join(SYNTHETIC_TASKS) if field == "task" else ""


class RichProgress:
    """One bar per run: rounds done, tenants done in the last round, metric, largest epsilon."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task_id: Any = None

    def started(self, spec: SimulationSpec, config: RunConfig, label: str) -> None:
        # Fits 80 columns: spinner and clock move within a round; the detail is at most 44 characters.
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=6),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=4,
        )
        self.progress.start()
        self.console.print(f"{label} {config.run_name}: {config.rounds} rounds, {spec.tenants} tenants")
        self.task_id = self.progress.add_task(label[:8], total=config.rounds, detail="starting Flower…")

    def round_done(self, record: RoundRecord, epsilon: RoundEpsilon | None) -> None:
        assert self.progress is not None
        accepted = sum(1 for s in record.statuses.values() if s == "accepted")
        metric = "-" if record.metric is None else f"{record.metric:.4f}"
        detail = progress_detail(accepted, len(record.statuses), len(record.skipped), metric, epsilon)
        self.progress.update(self.task_id, advance=1, detail=detail)

    def finished(self) -> None:
        if self.progress is not None:
            self.progress.stop()


#: The progress line's detail column (80 columns: spinner, label, bar, M/N and clock take the rest).
DETAIL_WIDTH = 44


def progress_detail(
    accepted: int, dispatched: int, skipped: int, metric: str, epsilon: RoundEpsilon | None
) -> str:
    """The round's one-line detail: this run's ε and the lifetime ε labelled apart, then the counts
    and the metric; what does not fit ``DETAIL_WIDTH`` columns is dropped (the skip count, then the
    metric), never ε."""
    eps = epsilon.label() if epsilon is not None else "ε run - life -"
    for parts in (
        (f"{accepted}/{dispatched} ok {skipped} skip", metric, eps),
        (f"{accepted}/{dispatched} ok", metric, eps),
        (f"{accepted}/{dispatched} ok", eps),
    ):
        detail = " ".join(parts)
        if len(detail) <= DETAIL_WIDTH:
            return detail
    return eps[:DETAIL_WIDTH]


def _eps(value: Any) -> str:
    return "∞" if value == "inf" else f"{float(value):.4f}"


def _summary(console: Console, result: SimulationResult, path: Path) -> None:
    report = result.main.report
    table = Table(title=f"{report['config']['run_name']}: {len(report['tenants'])} tenants")
    for column in ("tenant", "sampled", "skipped", "ε this run", "ε lifetime", "ε cap"):
        table.add_column(column, justify="right" if column != "tenant" else "left")
    tenants = list(report["tenants"].items())
    for name, tenant in tenants[:20]:
        sampled = sum(1 for r in report["rounds"] if name in r["participants"])
        skipped = sum(1 for r in report["rounds"] if name in r["skipped"])
        table.add_row(
            name,
            str(sampled),
            str(skipped),
            _eps(tenant.get("epsilon_run", tenant["epsilon_spent"])),
            _eps(tenant["epsilon_spent"]),
            f"{tenant['epsilon_cap']:g}",
        )
    if len(tenants) > 20:
        table.add_row(f"… {len(tenants) - 20} more", "", "", "", "", "")
    console.print(table)
    final = report["final"]
    metric = "-" if final["metric"] is None else f"{final['metric']:.4f}"
    train = final.get("train_metric")
    train_note = "" if train is None else f" (train {train:.4f})"
    console.print(
        f"held-out metric {metric}{train_note}; model {final['model_name']} {final['model_version']}"
    )
    for point in result.sweep:
        console.print(
            f"ε={point['epsilon']}: federated {point['federated_metric']:.4f}, "
            f"centralized {point['centralized_metric']:.4f}"
        )
    if result.main.seconds_to_first_round is not None:
        console.print(f"first round after {result.main.seconds_to_first_round:.1f}s")
    console.print(f"report: {path}")


def simulate_cmd(
    config: Path | None = typer.Option(None, "--config", help="TOML file with the simulation's values."),
    task: str | None = typer.Option(
        None, "--task", help=f"Model type: {_choices('task')}. (default: {_default('task')})"
    ),
    tenants: int | None = typer.Option(
        None, "--tenants", help=f"Number of synthetic tenants. (default: {_default('tenants')})"
    ),
    rounds: int | None = typer.Option(
        None, "--rounds", help=f"Rounds of federated training. (default: {_default('rounds')})"
    ),
    fraction: float | None = typer.Option(
        None,
        "--fraction",
        help=f"Share of admitted tenants sampled per round. (default: {_default('fraction')})",
    ),
    partition: str | None = typer.Option(
        None, "--partition", help=f"digits split: iid, dirichlet or size. (default: {_default('partition')})"
    ),
    alpha: float | None = typer.Option(
        None, "--alpha", help=f"Dirichlet concentration (smaller: more skew). (default: {_default('alpha')})"
    ),
    dp: str | None = typer.Option(
        None, "--dp", help=f"DP mode: off, local, central or both. (default: {_default('dp')})"
    ),
    noise_multiplier: float | None = typer.Option(
        None, "--noise-multiplier", help="DP-SGD noise multiplier z. (default: the task's)"
    ),
    target_epsilon: float | None = typer.Option(
        None, "--target-epsilon", help="Calibrate z so the whole run spends at most this epsilon."
    ),
    clip: float | None = typer.Option(None, "--clip", help="Clipping norm C. (default: the task's)"),
    central_noise_multiplier: float | None = typer.Option(
        None,
        "--central-noise-multiplier",
        help="Central DP: the server's noise multiplier on the clipped sum (default: --noise-multiplier).",
    ),
    central_clip: float | None = typer.Option(
        None, "--central-clip", help="Central DP: clip of each tenant's update (default: --clip)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="DP-SGD steps per round (task default)."),
    sample_rate: float | None = typer.Option(
        None, "--sample-rate", help="Poisson sampling rate q. (default: the task's)"
    ),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (task default)."),
    epsilon_cap: float | None = typer.Option(
        None,
        "--epsilon-cap",
        help="Budget cap of every tenant. (default: the platform's (ACCUTE_DEFAULT_EPSILON_CAP))",
    ),
    cap: list[str] = typer.Option([], "--cap", help="tenant-K=EPSILON, one tenant's cap (repeatable)."),
    delta: float | None = typer.Option(None, "--delta", help=f"Target delta. (default: {_default('delta')})"),
    consent_share: float | None = typer.Option(
        None,
        "--consent-share",
        help=f"Share of each tenant's users who consent (0-1). (default: {_default('consent_share')})",
    ),
    withdraw: list[str] = typer.Option(
        [], "--withdraw", help="ROUND:TENANT:COUNT: COUNT users withdraw after ROUND (repeatable)."
    ),
    erasure: list[str] = typer.Option(
        [], "--erasure", help="ROUND:TENANT: one user's erasure request after ROUND (repeatable)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help=f"Seed of data, sampling and noise (>= 1). (default: {_default('seed')})"
    ),
    out: Path | None = typer.Option(None, "--out", help="Report directory (default simulation-report)."),
    sweep: str | None = typer.Option(
        None,
        "--sweep",
        help="epsilon=0.5,1,2,4,8,inf: accuracy against ε; each point is its own federation in a fresh SQLite database under OUT/sweep/ (the main run uses the configured database).",
    ),
    run_name: str | None = typer.Option(None, "--run-name", help="Run name (default sim-<timestamp>)."),
    fresh_tenants: bool = typer.Option(
        False,
        "--fresh-tenants",
        help="New organizations named after the run (empty ledgers) instead of the seed's shared ones.",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the report path."),
) -> None:
    """Run a governed DP federation of synthetic tenants and write a validation report."""
    values: dict[str, Any] = load_toml(config) if config is not None else {}
    flags: dict[str, Any] = {
        "task": task,
        "tenants": tenants,
        "rounds": rounds,
        "fraction": fraction,
        "partition": partition,
        "alpha": alpha,
        "dp": dp,
        "noise_multiplier": noise_multiplier,
        "target_epsilon": target_epsilon,
        "clip": clip,
        "central_noise_multiplier": central_noise_multiplier,
        "central_clip": central_clip,
        "steps": steps,
        "sample_rate": sample_rate,
        "lr": lr,
        "epsilon_cap": epsilon_cap,
        "delta": delta,
        "consent_share": consent_share,
        "seed": seed,
        "out": str(out) if out is not None else None,
        "run_name": run_name,
        "fresh_tenants": fresh_tenants or None,
    }
    values |= {k: v for k, v in flags.items() if v is not None}
    if cap:
        values["caps"] = dict(values.get("caps") or {}) | parse_caps(cap)
    if withdraw:
        values["withdraw"] = list(withdraw)
    if erasure:
        values["erasure"] = list(erasure)
    if sweep is not None:
        values["sweep"] = parse_sweep(sweep)
    values.setdefault("run_name", f"sim-{utcnow():%Y%m%d-%H%M%S}")
    for key, value in values.items():
        if isinstance(value, float) and math.isnan(value):
            raise InvalidInputError(f"--{key.replace('_', '-')} must be a number, not NaN")
    spec = build_spec(values)
    spec.run_config()  # calibrates --target-epsilon: an impossible target fails here
    settings = load_settings()
    database = cli_engine(create=True)
    if current_revision(database) is None:
        upgrade(database)
    check_new_run(database, spec.run_name)
    logging.getLogger("flwr").setLevel(logging.ERROR)  # Flower's run_simulation deprecation notice
    console = Console(stderr=False, quiet=quiet)
    result = simulate(spec, settings, progress=None if quiet else RichProgress(console))
    nothing = nothing_trained_reason(result.main.report)
    if nothing is not None:
        result.main.report["nothing_trained"] = nothing
    path = write_result(result).resolve()
    if nothing is not None:
        raise NothingTrainedError(f"the run trained nothing: {nothing}; report: {path}")
    if quiet:
        typer.echo(str(path))
    else:
        _summary(console, result, path)
