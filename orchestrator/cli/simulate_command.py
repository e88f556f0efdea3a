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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fl_server.config import RunConfig
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


class RichProgress:
    """One bar per run: rounds done, tenants done in the last round, metric, largest epsilon."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task_id: Any = None

    def started(self, spec: SimulationSpec, config: RunConfig, label: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task_id = self.progress.add_task(
            f"{label} {config.run_name}", total=config.rounds, detail="starting Flower's simulation engine…"
        )

    def round_done(self, record: RoundRecord, max_epsilon: float) -> None:
        assert self.progress is not None
        accepted = sum(1 for s in record.statuses.values() if s == "accepted")
        metric = "-" if record.metric is None else f"{record.metric:.4f}"
        detail = (
            f"round {record.server_round}: {accepted}/{len(record.statuses)} tenants done, "
            f"{len(record.skipped)} skipped · metric {metric} · max ε {max_epsilon:.3f}"
        )
        self.progress.update(self.task_id, advance=1, detail=detail)

    def finished(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _summary(console: Console, result: SimulationResult, path: Path) -> None:
    report = result.main.report
    table = Table(title=f"{report['config']['run_name']}: {len(report['tenants'])} tenants")
    for column in ("tenant", "sampled", "skipped", "ε spent", "ε cap"):
        table.add_column(column, justify="right" if column != "tenant" else "left")
    tenants = list(report["tenants"].items())
    for name, tenant in tenants[:20]:
        sampled = sum(1 for r in report["rounds"] if name in r["participants"])
        skipped = sum(1 for r in report["rounds"] if name in r["skipped"])
        table.add_row(
            name, str(sampled), str(skipped), f"{tenant['epsilon_spent']:.4f}", f"{tenant['epsilon_cap']:g}"
        )
    if len(tenants) > 20:
        table.add_row(f"… {len(tenants) - 20} more", "", "", "", "")
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
    task: str | None = typer.Option(None, "--task", help="Model type: digits, time_estimation, …"),
    tenants: int | None = typer.Option(None, "--tenants", help="Number of synthetic tenants."),
    rounds: int | None = typer.Option(None, "--rounds", help="Rounds of federated training."),
    fraction: float | None = typer.Option(
        None, "--fraction", help="Share of admitted tenants sampled per round."
    ),
    partition: str | None = typer.Option(None, "--partition", help="digits split: iid, dirichlet or size."),
    alpha: float | None = typer.Option(None, "--alpha", help="Dirichlet concentration (smaller: more skew)."),
    dp: str | None = typer.Option(None, "--dp", help="off, local, central or both."),
    noise_multiplier: float | None = typer.Option(
        None, "--noise-multiplier", help="DP-SGD noise multiplier z."
    ),
    target_epsilon: float | None = typer.Option(
        None, "--target-epsilon", help="Calibrate z so the whole run spends at most this epsilon."
    ),
    clip: float | None = typer.Option(None, "--clip", help="Clipping norm C."),
    steps: int | None = typer.Option(None, "--steps", help="DP-SGD steps per round (task default)."),
    sample_rate: float | None = typer.Option(None, "--sample-rate", help="Poisson sampling rate q."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (task default)."),
    epsilon_cap: float | None = typer.Option(None, "--epsilon-cap", help="Budget cap of every tenant."),
    cap: list[str] = typer.Option([], "--cap", help="tenant-K=EPSILON, one tenant's cap (repeatable)."),
    delta: float | None = typer.Option(None, "--delta", help="Target delta."),
    consent_share: float | None = typer.Option(
        None, "--consent-share", help="Share of each tenant's users who consent (0-1)."
    ),
    withdraw: list[str] = typer.Option(
        [], "--withdraw", help="ROUND:TENANT:COUNT: COUNT users withdraw after ROUND (repeatable)."
    ),
    erasure: list[str] = typer.Option(
        [], "--erasure", help="ROUND:TENANT: one user's erasure request after ROUND (repeatable)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of data, sampling and noise (>= 1)."),
    out: Path | None = typer.Option(None, "--out", help="Report directory (default simulation-report)."),
    sweep: str | None = typer.Option(None, "--sweep", help="epsilon=0.5,1,2,4,8,inf: accuracy against ε."),
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
