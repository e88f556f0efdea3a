"""A counter that tells every worker "blocks changed": bumped in the transaction that raises a
block or resolves a blocking anomaly, read by each worker's refresher (one primary-key read).

Workers compare it with the value they last saw and reload their blocks when it moved, so a block
raised on one worker, or a resolution by the CLI or API, takes effect on the others within the
poll interval (``ACCUTE_SECURITY_CHANGE_POLL_S``) instead of the context refresh; with Redis a
published message wakes them at once (``orchestrator.security.block_sync``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from schema.models import SecurityAnomaly, SecurityGeneration

ROW_ID = 1


def bump(session: Session) -> None:
    """Add one to the counter, in the caller's transaction (the row is created if missing)."""
    changed = session.execute(
        update(SecurityGeneration)
        .where(SecurityGeneration.id == ROW_ID)
        .values(generation=SecurityGeneration.generation + 1)
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount:  # type: ignore[attr-defined]
        return
    try:
        with session.begin_nested():
            session.add(SecurityGeneration(id=ROW_ID, generation=1))
            session.flush()
    except IntegrityError:  # another writer created it first
        bump(session)


def current(connection: Connection | Session) -> int:
    """The counter (0 before the first change)."""
    value = connection.execute(
        select(SecurityGeneration.generation).where(SecurityGeneration.id == ROW_ID)
    ).scalar_one_or_none()
    return int(value or 0)


def resolved_subjects(session: Session, since: datetime) -> dict[str, datetime]:
    """Subject -> when it was resolved, for the blocking anomalies resolved at or after ``since``."""
    rows = session.execute(
        select(SecurityAnomaly.details, SecurityAnomaly.reviewed_at).where(
            SecurityAnomaly.auto_blocked.is_(True), SecurityAnomaly.reviewed_at >= since
        )
    )
    found: dict[str, datetime] = {}
    for details, reviewed in rows:
        subject = (details or {}).get("subject") if isinstance(details, dict) else None
        if isinstance(subject, str) and subject and reviewed is not None:
            found[subject] = max(reviewed, found.get(subject, reviewed))
    return found
