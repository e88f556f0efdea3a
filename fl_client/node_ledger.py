"""The tenant node's own files: its privacy ledger and the evaluations it kept to itself.

A node keeps, under its ``state-dir``, one ledger file per (organization, model type, unit of
privacy) — units never mix in one ε — and one evaluation file per (organization, model type).
Each ledger row is one instructed DP-SGD event, written *before* the node trains (charge before
release: a crash after the update left can only over-count), with the ε the node's own accountant
gave its whole history after that event, and the run, round, unit and time (ISO 8601, UTC).

Only the standard library here: ``accute-fl node ledger`` reads these files and must start like a
small tool (no torch, Opacus or Flower). The ClientApp (``fl_client.app``) computes ε and writes.

Files are JSON documents ``{"organization_id", "task", "unit", "rows": [...]}``, replaced
atomically (write a temporary file, fsync, rename). A pre-unit ledger (``ledger-ORG-TASK.json``,
a bare list of record-level events) is read as the record-level ledger and folded into the new
file on the next write; a crash between that write and removing the old file counts its rows
twice, which over-counts (the safe side).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schema.errors import InvalidInputError

LEDGER_PREFIX = "ledger-"
EVALUATIONS_PREFIX = "evaluations-"
#: Unit under which a node records the non-private (dp=False) updates it released: ε = ∞.
NON_PRIVATE = "non_private"
#: Refuse to read a state file larger than this (a node ledger has one small row per round).
MAX_FILE_BYTES = 64 * 1024 * 1024

_LEGACY = re.compile(
    r"^ledger-(?P<org>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})-(?P<task>.+)\.json$"
)

Row = dict[str, Any]


def now_iso() -> str:
    """The current time as ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _safe(part: str) -> str:
    """A name part safe in a file name (ids and model types already are; anything else is replaced)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part)


def ledger_path(state_dir: Path, organization_id: str, task: str, unit: str) -> Path:
    return state_dir / f"{LEDGER_PREFIX}{_safe(organization_id)}-{_safe(task)}-{_safe(unit)}.json"


def legacy_ledger_path(state_dir: Path, organization_id: str, task: str) -> Path:
    return state_dir / f"{LEDGER_PREFIX}{_safe(organization_id)}-{_safe(task)}.json"


def evaluations_path(state_dir: Path, organization_id: str, task: str) -> Path:
    return state_dir / f"{EVALUATIONS_PREFIX}{_safe(organization_id)}-{_safe(task)}.json"


def read_json(path: Path) -> Any:
    """A state file's JSON, refusing one over ``MAX_FILE_BYTES`` or not JSON, with a one-line reason."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InvalidInputError(
            f"{path} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit of a node state file"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{path} is not a node state file ({exc}); restore it from a backup"
        ) from None


def write_json(path: Path, document: Any) -> None:
    """Replace ``path`` atomically and durably: a reader sees the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def _document(organization_id: str, task: str, unit: str, rows: list[Row]) -> dict[str, Any]:
    return {"organization_id": organization_id, "task": task, "unit": unit, "rows": rows}


def load_ledger(state_dir: Path, organization_id: str, task: str, unit: str) -> list[Row]:
    """The ledger rows of one (organization, task, unit), oldest first (a pre-unit file counts as record level)."""
    rows: list[Row] = []
    legacy = legacy_ledger_path(state_dir, organization_id, task)
    if unit == "record" and legacy.exists():
        rows.extend({**row, "unit": "record"} for row in _rows_of(read_json(legacy), legacy))
    path = ledger_path(state_dir, organization_id, task, unit)
    if path.exists():
        rows.extend(_rows_of(read_json(path), path))
    return rows


def save_ledger(state_dir: Path, organization_id: str, task: str, unit: str, rows: list[Row]) -> None:
    """Write the whole ledger of one (organization, task, unit); folds a pre-unit file into it."""
    write_json(
        ledger_path(state_dir, organization_id, task, unit), _document(organization_id, task, unit, rows)
    )
    legacy = legacy_ledger_path(state_dir, organization_id, task)
    if unit == "record" and legacy.exists():
        legacy.unlink()


def append_evaluation(state_dir: Path, organization_id: str, task: str, row: Row) -> None:
    path = evaluations_path(state_dir, organization_id, task)
    rows = _rows_of(read_json(path), path) if path.exists() else []
    write_json(path, _document(organization_id, task, "", [*rows, row]))


def _rows_of(document: Any, path: Path) -> list[Row]:
    rows = (
        document
        if isinstance(document, list)
        else document.get("rows")
        if isinstance(document, dict)
        else None
    )
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InvalidInputError(f"{path} is not a node ledger (no list of rows); restore it from a backup")
    return rows


def _files(state_dir: Path, prefix: str) -> Iterator[Path]:
    if not state_dir.is_dir():
        raise InvalidInputError(f"state directory {state_dir} does not exist; pass the node's --state-dir")
    yield from sorted(p for p in state_dir.glob(f"{prefix}*.json") if p.is_file())


def read_all(
    state_dir: Path, prefix: str, organization_id: str | None = None, task: str | None = None
) -> list[Row]:
    """Every row of the node's ledger (``LEDGER_PREFIX``) or evaluation (``EVALUATIONS_PREFIX``) files,
    each with its organization, task and unit, filtered by organization and task when given."""
    out: list[Row] = []
    for path in _files(state_dir, prefix):
        document = read_json(path)
        if isinstance(document, list):  # a pre-unit ledger: record level, names in the file name
            match = _LEGACY.match(path.name)
            header = {
                "organization_id": match["org"] if match else "",
                "task": match["task"] if match else "",
            }
            header["unit"] = "record"
        elif isinstance(document, dict):
            header = {k: str(document.get(k, "")) for k in ("organization_id", "task", "unit")}
        else:
            raise InvalidInputError(f"{path} is not a node state file; restore it from a backup")
        if organization_id is not None and header["organization_id"].lower() != organization_id.lower():
            continue
        if task is not None and header["task"] != task:
            continue
        out.extend({**header, **row} for row in _rows_of(document, path))
    return out


def latest_by_ledger(rows: Iterable[Row]) -> list[Row]:
    """The last row of each (organization, task, unit): where each of the node's ledgers stands now."""
    last: dict[tuple[str, str, str], Row] = {}
    for row in rows:
        last[(row.get("organization_id", ""), row.get("task", ""), row.get("unit", ""))] = row
    return list(last.values())
