"""Which run a privacy-ledger event belongs to (for ``budget history`` and run reports).

A local event (DP-SGD, or a non-private release) pays for one contribution, and the contribution
belongs to a run through its round outcome: an exact join. A central event pays for a round's
aggregate and has no contribution; it is attributed to the runs of the same model type with
central DP that were active when it was charged (created before it; finished after it, or still
running) and whose round count covers its round. Usually that is one run; two concurrent central
runs over one tenant would both be named (``a|b``): without a schema change (a run id on the
event) nothing tells them apart, and naming both is the honest answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from privacy.ledger import HistoryEntry
from schema.models import FlRoundOutcome, FlRun
from schema.timeutil import iso


def runs_of_events(
    session: Session, model_type: str, entries: Iterable[HistoryEntry]
) -> dict[int, str | None]:
    """Event id -> run name (``a|b`` when a central event fits several runs; None when none)."""
    entries = list(entries)
    contributions = [uuid.UUID(e.contribution_id) for e in entries if e.contribution_id]
    by_contribution: dict[str, str] = {}
    for start in range(0, len(contributions), 500):
        chunk = contributions[start : start + 500]
        for contribution_id, name in session.execute(
            select(FlRoundOutcome.contribution_id, FlRun.name)
            .join(FlRun, FlRun.id == FlRoundOutcome.run_id)
            .where(FlRoundOutcome.contribution_id.in_(chunk))
        ):
            by_contribution[str(contribution_id)] = name
    central_runs = [
        (run.name, iso(run.created_at) or "", None if run.status == "running" else iso(run.updated_at), run)
        for run in session.scalars(select(FlRun).where(FlRun.task == model_type).order_by(FlRun.created_at))
        if str(dict(run.config).get("dp", "")) in ("central", "both")
    ]
    out: dict[int, str | None] = {}
    for entry in entries:
        if entry.contribution_id:
            out[entry.id] = by_contribution.get(entry.contribution_id)
            continue
        created = entry.created_at or ""
        names = [
            name
            for name, start, end, run in central_runs
            if start <= created
            and (end is None or created <= end)
            and (entry.aggregation_round or 0) <= int(dict(run.config).get("rounds", 0) or 0)
        ]
        out[entry.id] = "|".join(names) if names else None
    return out
