"""Piped tables are written without rich, byte for byte as rich draws them; anything rich would
restyle (markup, emoji codes, wide characters) still goes through rich."""

from __future__ import annotations

import io
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from orchestrator.cli import output

SAFE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " -_.@&+:/'\"(){}#=", max_size=24)


def drawn_by_rich(title: str, cells: list[list[str]], columns: list[str]) -> str:
    """What ``emit_table`` printed through rich on a pipe (its code path before the plain renderer)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=output.natural_width(title, cells, columns))
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    return buffer.getvalue()


@settings(max_examples=150, deadline=None)
@given(
    title=SAFE_TEXT,
    columns=st.lists(
        st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12), min_size=1, max_size=6
    ),
    data=st.data(),
)
def test_plain_table_is_what_rich_draws(title: str, columns: list[str], data: st.DataObject) -> None:
    # Prepare
    cells = data.draw(
        st.lists(st.lists(SAFE_TEXT, min_size=len(columns), max_size=len(columns)), min_size=1, max_size=4)
    )

    # Execute
    plain = output.plain_table(title, cells, columns)

    # Assert
    texts = [title, *columns, *(c for row in cells for c in row)]
    table_width = len(drawn_by_rich("x", cells, columns).splitlines()[1])
    ordinary = title == title.strip() != "" and len(title) <= table_width and not any(":" in t for t in texts)
    assert plain is not None or not ordinary  # not vacuous: ordinary text is drawn without rich
    if plain is not None:
        assert plain == drawn_by_rich(title, cells, columns)


@pytest.mark.parametrize(
    "cell",
    ["[bold]Acme[/bold]", "thumbs :thumbsup:", "café", "全角", "tab\there", ":100:"],
)
def test_text_rich_would_restyle_is_left_to_rich(cell: str) -> None:
    assert output.plain_table("Organizations", [[cell, "x"]], ["name", "id"]) is None


def test_timestamps_and_ids_stay_plain() -> None:
    cells = [["9f0a7a34-9d06-4e54-9f5c-09d4eb48e219", "2026-11-30T04:33:41.225765+00:00"]]

    plain = output.plain_table("Organizations", cells, ["id", "created_at"])

    assert plain == drawn_by_rich("Organizations", cells, ["id", "created_at"])


def test_piped_emit_table_falls_back_to_rich_for_markup(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    for name in output.RICH_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    rows = [{"name": "[red]Acme", "id": "1"}]

    # Execute
    output.emit_table("Organizations", rows, ["name", "id"])

    # Assert: rich's own rendering (it reads "[red]" as a style), as before the plain renderer
    assert capsys.readouterr().out == drawn_by_rich("Organizations", [["[red]Acme", "1"]], ["name", "id"])


def test_piped_empty_listing_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in output.RICH_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)

    output.emit_table("Organizations", [], ["id"])

    assert capsys.readouterr().out == "Organizations: none\n"
