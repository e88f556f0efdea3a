"""`accute-fl node ...`: what a tenant node keeps to itself, read from its ``state-dir``.

- ``node ledger``: the node's own privacy ledger — one row per instructed DP-SGD event, with the
  ε the node's accountant gave its history after it (per model type and unit of privacy).
- ``node evaluations``: the held-out metrics of DP runs, which never leave the node.

Reads files only (``fl_client.node_ledger``): no database, no torch, Opacus or Flower.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from fl_client import node_ledger
from orchestrator.cli.output import emit

node_app = typer.Typer(help="A tenant node's own privacy ledger and kept evaluations.", no_args_is_help=True)

STATE_DIR_OPTION = typer.Option(..., "--state-dir", help="The node's state-dir (its node config 'state-dir').")
ORG_OPTION = typer.Option(None, "--org", help="Only this organization id.")
TASK_OPTION = typer.Option(None, "--task", help="Only this model type.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")

LEDGER_COLUMNS = (
    "organization_id",
    "task",
    "unit",
    "run_id",
    "server_round",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "delta",
    "epsilon",
    "epsilon_cap",
    "time",
)
EVALUATION_COLUMNS = (
    "organization_id",
    "task",
    "run_id",
    "server_round",
    "metric",
    "value",
    "loss",
    "num_examples",
    "time",
)


def _readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Floats to 4 significant digits for the table (ε = ∞ as 'inf'); JSON keeps full precision."""
    return [
        {k: (f"{v:.4g}" if math.isfinite(v) else str(v)) if isinstance(v, float) else v for k, v in row.items()}
        for row in rows
    ]


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
        emit(_json_safe(rows), True, "Node ledger", LEDGER_COLUMNS)
    else:
        emit(_readable(rows), False, f"Node ledger ({state_dir})", LEDGER_COLUMNS)


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
        emit(_json_safe(rows), True, "Node evaluations", EVALUATION_COLUMNS)
    else:
        emit(_readable(rows), False, f"Node evaluations ({state_dir})", EVALUATION_COLUMNS)
