"""How commands print: JSON for scripts (``--json``), a rich table for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def emit_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    from rich.console import Console  # only tables need rich; --json output stays light
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


def emit(
    payload: dict[str, Any] | list[dict[str, Any]], as_json: bool, title: str, columns: Sequence[str]
) -> None:
    if as_json:
        emit_json(payload)
    else:
        emit_table(title, payload if isinstance(payload, list) else [payload], columns)
