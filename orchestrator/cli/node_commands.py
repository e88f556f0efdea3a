"""`accute-fl node ...`: what a tenant node keeps to itself, read from its ``state-dir``.

- ``node ledger``: the node's own privacy ledger — one row per instructed DP-SGD event, with the
  ε the node's accountant gave its history after it (per model type and unit of privacy).
- ``node evaluations``: the held-out metrics of DP runs, which never leave the node.

Reads files only (``fl_client.node_ledger``): no database, no torch, Opacus or Flower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from fl_client import node_ledger
from orchestrator.cli.output import emit_json

node_app = typer.Typer(help="A tenant node's own privacy ledger and kept evaluations.", no_args_is_help=True)

STATE_DIR_OPTION = typer.Option(
    ..., "--state-dir", help="The node's state-dir (its node config 'state-dir')."
)
ORG_OPTION = typer.Option(None, "--org", help="Only this organization id.")
TASK_OPTION = typer.Option(None, "--task", help="Only this model type.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")

#: Table columns as (row key, header); each table is one (organization, task, unit) ledger, named
#: in its title. Short headers so a row fits 80 columns; ``--json`` has every field in full.
LEDGER_COLUMNS = (
    ("run_id", "run"),
    ("server_round", "round"),
    ("noise_multiplier", "z"),
    ("sample_rate", "q"),
    ("steps", "steps"),
    ("delta", "δ"),
    ("epsilon", "ε after"),
    ("epsilon_cap", "cap"),
    ("time", "time (UTC)"),
)
EVALUATION_COLUMNS = (
    ("run_id", "run"),
    ("server_round", "round"),
    ("metric", "metric"),
    ("value", "value"),
    ("loss", "loss"),
    ("num_examples", "examples"),
    ("time", "time (UTC)"),
)


def _cell(key: str, value: Any) -> str:
    """Floats to 4 significant digits (ε = ∞ as 'inf'), times to the minute; JSON keeps everything."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if key == "time" and isinstance(value, str) and "T" in value:
        return value.replace("T", " ")[:16]
    return str(value)


def _tables(
    kind: str, rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]], group: Sequence[str]
) -> None:
    """One table per ledger (or evaluation file); long values wrap instead of being cut."""
    console = Console()
    if not rows:
        console.print(f"{kind}: none")
        return
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k, "")) for k in group), []).append(row)
    for key, members in groups.items():
        names = {"organization_id": "organization", "task": "model type", "unit": "unit"}
        title = f"{kind}: " + ", ".join(f"{names[n]} {v}" for n, v in zip(group, key, strict=True) if v)
        table = Table(title=title, title_justify="left")
        for _, header in columns:
            table.add_column(header, overflow="fold")
        for row in members:
            table.add_row(*(_cell(key, row.get(key)) for key, _ in columns))
        console.print(table)


def _json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Infinite or NaN floats as strings: strict JSON has no Infinity."""
    return [
        {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        for row in rows
    ]


@node_app.command("ledger")
def ledger(
    state_dir: Path = STATE_DIR_OPTION,
    org: str | None = ORG_OPTION,
    task: str | None = TASK_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the node's own ledger: every instructed DP-SGD event, oldest first, with ε after it."""
    rows = node_ledger.read_all(state_dir, node_ledger.LEDGER_PREFIX, org, task)
    if as_json:
        emit_json(_json_safe(rows))
    else:
        _tables("Node ledger", rows, LEDGER_COLUMNS, ("organization_id", "task", "unit"))


@node_app.command("evaluations")
def evaluations(
    state_dir: Path = STATE_DIR_OPTION,
    org: str | None = ORG_OPTION,
    task: str | None = TASK_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the held-out metrics of DP runs that this node kept to itself."""
    rows = node_ledger.read_all(state_dir, node_ledger.EVALUATIONS_PREFIX, org, task)
    if as_json:
        emit_json(_json_safe(rows))
    else:
        _tables("Node evaluations", rows, EVALUATION_COLUMNS, ("organization_id", "task"))
