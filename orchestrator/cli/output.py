"""How commands print: JSON for scripts (``--json``), a rich table for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def _cells(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[list[str]]:
    return [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]


def natural_width(title: str, cells: list[list[str]], columns: Sequence[str]) -> int:
    """The width at which no header or cell of the table has to be cut or wrapped."""
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    return max(len(title), sum(widths) + 3 * len(widths) + 1)


def emit_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A table that never cuts an id: piped output is as wide as its content, a terminal folds long cells."""
    from rich.console import Console  # only tables need rich; --json output stays light
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"{title}: none")
        return
    cells = _cells(rows, columns)
    if not console.is_terminal:
        console = Console(width=natural_width(title, cells, columns))
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)


def emit(
    payload: dict[str, Any] | list[dict[str, Any]], as_json: bool, title: str, columns: Sequence[str]
) -> None:
    if as_json:
        emit_json(payload)
    else:
        emit_table(title, payload if isinstance(payload, list) else [payload], columns)
