"""The relay's SQL over ``hub_outbox``: claim, settle, dead letters, and the operator's numbers.

Claiming (``claim``) is one short transaction:

1. lock up to ``limit`` due, unleased ``pending`` rows in ``sequence`` order — ``FOR UPDATE SKIP
   LOCKED`` on PostgreSQL, so relays running at once take disjoint rows without waiting;
2. keep, per tenant, only the rows whose every earlier ``pending`` row of that tenant is kept too
   (a tenant whose head is waiting for a retry, leased or being claimed by another relay gives up
   all its later rows): that is what keeps a tenant's events in order across relays and retries;
3. stamp the kept rows with a lease (``claimed_by``, ``claim_expires``) and commit.

A relay that dies leaves its lease to expire (``lease_s``); its rows are then claimed again and
published a second time if the broker had them already — at least once, deduplicated downstream by
``event_id``. SQLite has no row locks: the lease UPDATE is conditional, so two relays never both
hold a row, but one relay per SQLite file is the supported setup (SQLite has a single writer).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, func, or_, select, update
from sqlalchemy.orm import Session

from orchestrator.hub.backoff import RetryPolicy
from schema.db import transaction
from schema.errors import ConflictError, InvalidInputError, NotFoundError
from schema.models.hub import HubOutbox
from schema.timeutil import as_utc, iso, utcnow

LAST_ERROR_CHARS = 500

#: What a claim reads back: the relay's bookkeeping and everything ``schema.events.envelope`` reads.
ENVELOPE_COLUMNS = (
    HubOutbox.sequence,
    HubOutbox.event_id,
    HubOutbox.event_type,
    HubOutbox.schema_version,
    HubOutbox.organization_id,
    HubOutbox.correlation_id,
    HubOutbox.payload,
    HubOutbox.occurred_at,
    HubOutbox.attempts,
)


@dataclass(frozen=True)
class Claimed:
    """One leased row, with the envelope to send (built once, in the claiming transaction)."""

    sequence: int
    event_id: uuid.UUID
    event_type: str
    organization_id: uuid.UUID | None
    correlation_id: str
    attempts: int
    occurred_at: datetime
    envelope: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """An attempt that did not get the event acknowledged."""

    sequence: int
    error: str
    retry_after_s: float | None = None


def _unleased(now: datetime) -> Any:
    return or_(HubOutbox.claim_expires.is_(None), HubOutbox.claim_expires < now)


def _tenant_filter(tenants: set[uuid.UUID | None]) -> Any:
    known = [t for t in tenants if t is not None]
    clauses = [HubOutbox.organization_id.in_(known)] if known else []
    if None in tenants:
        clauses.append(HubOutbox.organization_id.is_(None))
    return or_(*clauses)


def keep_ordered_prefixes(
    candidates: Sequence[tuple[int, uuid.UUID | None]], pending: Sequence[tuple[int, uuid.UUID | None]]
) -> list[int]:
    """The candidate sequences that each tenant may publish now, in order.

    ``pending`` is every pending row (sequence, tenant) of the candidates' tenants up to the last
    candidate; a tenant keeps its candidates only while they are exactly its next pending rows.
    Pure, so the rule is tested without a database.
    """
    chosen = {s for s, _ in candidates}
    blocked: set[uuid.UUID | None] = set()
    kept: list[int] = []
    for sequence, tenant in sorted(pending, key=lambda row: row[0]):
        if tenant in blocked:
            continue
        if sequence in chosen:
            kept.append(sequence)
        else:
            blocked.add(tenant)
    return kept


def claim(
    engine: Engine, relay_id: str, *, limit: int, lease_s: float, now: datetime | None = None
) -> list[Claimed]:
    """Lease the next batch this relay may publish (see the module docstring)."""
    from schema.events import envelope

    now = now or utcnow()
    expires = now + timedelta(seconds=lease_s)
    with transaction(engine) as session:
        candidates = [
            (int(s), o)
            for s, o in session.execute(
                select(HubOutbox.sequence, HubOutbox.organization_id)
                .where(HubOutbox.status == "pending", HubOutbox.next_attempt_at <= now, _unleased(now))
                .order_by(HubOutbox.sequence)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ]
        if not candidates:
            return []
        tenants = {o for _, o in candidates}
        pending = [
            (int(s), o)
            for s, o in session.execute(
                select(HubOutbox.sequence, HubOutbox.organization_id).where(
                    HubOutbox.status == "pending",
                    HubOutbox.sequence <= candidates[-1][0],
                    _tenant_filter(tenants),
                )
            )
        ]
        kept = keep_ordered_prefixes(candidates, pending)
        if not kept:
            return []
        # Plain rows (no ORM identity map): the lease and the columns the envelope needs, in one
        # round trip.
        rows = sorted(
            session.execute(
                update(HubOutbox)
                .where(HubOutbox.sequence.in_(kept), HubOutbox.status == "pending", _unleased(now))
                .values(claimed_by=relay_id, claim_expires=expires)
                .returning(*ENVELOPE_COLUMNS),
                execution_options={"synchronize_session": False},
            ).all(),
            key=lambda row: row.sequence,
        )
        return [
            Claimed(
                sequence=row.sequence,
                event_id=row.event_id,
                event_type=row.event_type,
                organization_id=row.organization_id,
                correlation_id=row.correlation_id,
                attempts=row.attempts,
                occurred_at=as_utc(row.occurred_at),
                envelope=envelope(row),  # type: ignore[arg-type]  # a Row has the same attributes
            )
            for row in rows
        ]


def settle(
    engine: Engine,
    relay_id: str,
    *,
    published: Sequence[tuple[int, datetime]],
    failed: Sequence[Failure],
    released: Sequence[int],
    attempts: dict[int, int],
    policy: RetryPolicy,
    now: datetime | None = None,
    in_transaction: Callable[[Session], None] | None = None,
) -> int:
    """Record a batch's outcome in one transaction; returns how many rows went to the dead letters.

    ``published`` rows were acknowledged (with the time of the ack); ``failed`` rows count one more
    attempt and wait for their backoff, or go ``dead`` when the policy is exhausted; ``released``
    rows were not tried (an earlier row of their tenant failed) and are simply unleased.
    """
    now = now or utcnow()
    dead = 0
    with transaction(engine) as session:
        if published:
            session.execute(
                update(HubOutbox),
                [
                    {
                        "sequence": s,
                        "status": "published",
                        "published_at": at,
                        "claimed_by": None,
                        "claim_expires": None,
                        "last_error": None,
                    }
                    for s, at in published
                ],
            )
        rows: list[dict[str, Any]] = []
        for failure in failed:
            tried = attempts[failure.sequence] + 1
            exhausted = policy.exhausted(tried)
            dead += exhausted
            rows.append(
                {
                    "sequence": failure.sequence,
                    "status": "dead" if exhausted else "pending",
                    "attempts": tried,
                    "next_attempt_at": now + timedelta(seconds=policy.delay(tried, failure.retry_after_s)),
                    "last_error": failure.error[:LAST_ERROR_CHARS],
                    "claimed_by": None,
                    "claim_expires": None,
                }
            )
        rows += [{"sequence": s, "claimed_by": None, "claim_expires": None} for s in released]
        if rows:
            session.execute(update(HubOutbox), rows)
        if in_transaction is not None:
            in_transaction(session)
    return dead


def hold_back(engine: Engine, sequences: Iterable[int], *, until: datetime) -> None:
    """Unlease rows without counting an attempt (the sink was unreachable; nothing was tried)."""
    chosen = list(sequences)
    if not chosen:
        return
    with transaction(engine) as session:
        session.execute(
            update(HubOutbox)
            .where(HubOutbox.sequence.in_(chosen), HubOutbox.status == "pending")
            .values(claimed_by=None, claim_expires=None, next_attempt_at=until)
        )


# ---- dead letters -------------------------------------------------------------------------------


def _row_view(row: HubOutbox) -> dict[str, Any]:
    return {
        "sequence": row.sequence,
        "event_id": str(row.event_id),
        "event_type": row.event_type,
        "organization_id": None if row.organization_id is None else str(row.organization_id),
        "status": row.status,
        "attempts": row.attempts,
        "occurred_at": iso(row.occurred_at),
        "next_attempt_at": iso(row.next_attempt_at),
        "last_error": row.last_error,
    }


def list_dead(
    session: Session, *, organization_id: uuid.UUID | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Dead letters, oldest first (optionally of one tenant)."""
    query = select(HubOutbox).where(HubOutbox.status == "dead")
    if organization_id is not None:
        query = query.where(HubOutbox.organization_id == organization_id)
    return [_row_view(r) for r in session.scalars(query.order_by(HubOutbox.sequence).limit(limit))]


def find_event(session: Session, ref: str) -> HubOutbox:
    """An outbox row by its ``event_id`` (UUID) or its ``sequence`` (integer)."""
    text = ref.strip()
    try:
        clause = HubOutbox.event_id == uuid.UUID(text)
    except ValueError:
        if not text.isdigit():
            raise InvalidInputError(
                f"'{ref}' is neither an event id (UUID) nor a sequence number; see `accute-fl hub dead`"
            ) from None
        clause = HubOutbox.sequence == int(text)
    row = session.scalars(select(HubOutbox).where(clause)).one_or_none()
    if row is None:
        raise NotFoundError(f"no outbox event '{ref}'; see `accute-fl hub dead`")
    return row


def replay(session: Session, ref: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Put a dead letter back in line: pending, attempts reset, due now (audited by the caller).

    The event keeps its ``sequence``: it goes ahead of its tenant's later pending events, so a
    consumer may see it after events that were published while it was dead (its ``sequence``
    in the message headers tells them apart).
    """
    row = find_event(session, ref)
    if row.status != "dead":
        raise ConflictError(f"event {row.event_id} is {row.status}, not dead; only dead letters are replayed")
    row.status = "pending"
    row.attempts = 0
    row.next_attempt_at = now or utcnow()
    row.claimed_by = None
    row.claim_expires = None
    session.flush()
    return _row_view(row)


# ---- pruning ------------------------------------------------------------------------------------

PRUNE_BATCH = 5_000


def prune(
    engine: Engine,
    *,
    older_than: timedelta,
    now: datetime | None = None,
    batch: int = PRUNE_BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete published events acknowledged before ``now - older_than``; returns how many.

    Only ``published`` rows go (the broker or hub acknowledged them: the outbox's job is done);
    pending and dead rows are never touched. Batches of ``batch`` rows, each in its own short
    transaction, so a large backlog neither holds one long lock nor grows one huge transaction,
    and an interrupted prune keeps what it deleted.
    """
    if older_than < timedelta(0):
        raise InvalidInputError("the age to prune must not be negative; e.g. --older-than-days 7")
    if batch < 1:
        raise InvalidInputError("the prune batch must be at least 1")
    cutoff = (now or utcnow()) - older_than
    total = 0
    while True:
        with transaction(engine) as session:
            chosen = select(HubOutbox.sequence).where(
                HubOutbox.status == "published", HubOutbox.published_at < cutoff
            )
            result = session.execute(
                delete(HubOutbox).where(HubOutbox.sequence.in_(chosen.limit(batch).scalar_subquery()))
            )
            done = int(cast(CursorResult[Any], result).rowcount)
        total += done
        if progress is not None and done:
            progress(total)
        if done < batch:
            return total


# ---- the operator's numbers ---------------------------------------------------------------------

STATUS_WINDOW_S = 600
LATENCY_SAMPLE = 10_000


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None for none)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def status(
    session: Session, *, now: datetime | None = None, window_s: int = STATUS_WINDOW_S
) -> dict[str, Any]:
    """Pending, oldest pending age, publish rate and commit→ack latency over the window, failures, dead.

    ``failing`` counts pending rows with at least one failed attempt (waiting for their backoff).
    Latency is ``published_at - occurred_at`` of the latest published rows in the window (at most
    ``LATENCY_SAMPLE``), i.e. from the transaction that wrote the event to the broker's ack.
    """
    now = now or utcnow()
    since = now - timedelta(seconds=window_s)
    counts = dict(session.execute(select(HubOutbox.status, func.count()).group_by(HubOutbox.status)).all())
    oldest = session.scalar(select(func.min(HubOutbox.occurred_at)).where(HubOutbox.status == "pending"))
    failing = session.scalar(
        select(func.count()).where(HubOutbox.status == "pending", HubOutbox.attempts > 0)
    )
    leased = session.scalar(
        select(func.count()).where(HubOutbox.status == "pending", HubOutbox.claim_expires >= now)
    )
    recent = session.execute(
        select(HubOutbox.occurred_at, HubOutbox.published_at)
        .where(HubOutbox.status == "published", HubOutbox.published_at >= since)
        .order_by(HubOutbox.published_at.desc())
        .limit(LATENCY_SAMPLE)
    ).all()
    published_in_window = session.scalar(
        select(func.count()).where(HubOutbox.status == "published", HubOutbox.published_at >= since)
    )
    latencies = sorted(
        max(0.0, (as_utc(p) - as_utc(o)).total_seconds() * 1000.0) for o, p in recent if p is not None
    )
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {
        "pending": int(counts.get("pending", 0)),
        "leased": int(leased or 0),
        "oldest_pending_age_s": None if oldest is None else round((now - as_utc(oldest)).total_seconds(), 3),
        "published_total": int(counts.get("published", 0)),
        "published_per_minute": round(int(published_in_window or 0) / (window_s / 60.0), 2),
        "failing": int(failing or 0),
        "dead": int(counts.get("dead", 0)),
        "latency_ms_p50": None if p50 is None else round(p50, 3),
        "latency_ms_p99": None if p99 is None else round(p99, 3),
        "window_s": window_s,
    }


def by_tenant(rows: Iterable[Claimed]) -> dict[uuid.UUID | None, list[Claimed]]:
    """Rows grouped by tenant, each group in sequence order."""
    groups: dict[uuid.UUID | None, list[Claimed]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.sequence):
        groups[row.organization_id].append(row)
    return dict(groups)


__all__ = [
    "Claimed",
    "Failure",
    "by_tenant",
    "claim",
    "find_event",
    "hold_back",
    "keep_ordered_prefixes",
    "list_dead",
    "percentile",
    "replay",
    "settle",
    "status",
]
