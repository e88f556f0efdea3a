"""How commands print: JSON for scripts (``--json``), a rich table for people."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

#: Variables that make rich style or size output written to a pipe: then rich draws the table.
RICH_ENVIRONMENT = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "JUPYTER_COLUMNS")
_EMOJI_CODE = re.compile(r":(\S*?)(?:-(?:emoji|text))?:")
#: The emoji names rich knows that are all digits (a timestamp's ":33:" is none of them).
_DIGIT_EMOJI = ("100", "1234")


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def _cells(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[list[str]]:
    return [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]


def natural_width(title: str, cells: list[list[str]], columns: Sequence[str]) -> int:
    """The width at which no header or cell of the table has to be cut or wrapped."""
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    return max(len(title), sum(widths) + 3 * len(widths) + 1)


def _plain(text: str) -> bool:
    """Text rich would print as is: printable ASCII (one cell per character), no markup, no emoji code."""
    if not (text.isascii() and text.isprintable()) or "[" in text:
        return False
    return all(m.group(1).isdigit() and m.group(1) not in _DIGIT_EMOJI for m in _EMOJI_CODE.finditer(text))


def plain_table(title: str, cells: list[list[str]], columns: Sequence[str]) -> str | None:
    """What rich prints for this table on a pipe (heavy-head box, natural width), or None when rich
    would change the text (markup, emoji codes, wide characters, a title wider than the table)."""
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    width = sum(widths) + 3 * len(widths) + 1
    if (
        not title
        or title != title.strip()
        or len(title) > width
        or not all(_plain(t) for t in (title, *columns, *(c for row in cells for c in row)))
    ):
        return None

    def line(left: str, fill: str, middle: str, right: str) -> str:
        return left + middle.join(fill * (w + 2) for w in widths) + right

    def values(edge: str, texts: Sequence[str]) -> str:
        return edge + edge.join(f" {t.ljust(w)} " for t, w in zip(texts, widths, strict=True)) + edge

    lines = [title.ljust(width), line("┏", "━", "┳", "┓"), values("┃", columns), line("┡", "━", "╇", "┩")]
    lines += [values("│", row) for row in cells]
    lines.append(line("└", "─", "┴", "┘"))
    return "\n".join(lines) + "\n"


def _piped() -> bool:
    """Output to a pipe or file that rich would neither style nor size from the environment."""
    return not sys.stdout.isatty() and not any(os.environ.get(name) for name in RICH_ENVIRONMENT)


def emit_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A table that never cuts an id: piped output is as wide as its content, a terminal folds long cells.

    Piped plain text is written without importing rich (a tenth of a small command's start-up),
    byte for byte as rich draws it; a terminal, or text rich would restyle, goes through rich.
    """
    cells = _cells(rows, columns)
    if _piped():
        if not rows and _plain(title) and len(title) + 6 <= 80:  # rich's default width off a terminal
            sys.stdout.write(f"{title}: none\n")
            return
        drawn = plain_table(title, cells, columns) if rows else None
        if drawn is not None:
            sys.stdout.write(drawn)
            return
    from rich.console import Console  # a terminal, or text rich restyles
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"{title}: none")
        return
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
