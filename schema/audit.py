"""The hash-chained audit log (invariant 8): append a record, verify a chain end to end.

Each organization has its own chain, ordered by id: a record's ``record_hash`` is the SHA-256 of
its canonical content including the previous record's hash, so editing, deleting or reordering
any record breaks every hash after it. System-wide events use the nil UUID as organization.

Records carry ids, never personal data (issue 19): a personal value that must stay is sealed under
the user's data key (``schema.personal_data``), so erasure makes it unreadable without touching
the chain. A migration that must rewrite old payloads (0007 removed the emails of ``user.created``)
re-hashes the chain from the first rewritten record and appends an ``audit.reanchored`` record
naming the old head, the migration, the rewritten ids and the new head, bound by an HMAC keyed with
the old head: whoever kept the old head (an external anchor) can check that this re-anchor, and no
other change, leads from it to the new chain. ``verify`` checks every re-anchor record it meets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any, Protocol

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from schema.models import ImmutableAuditLog
from schema.timeutil import iso, utcnow

GENESIS_HASH = "0" * 64
SYSTEM_ORGANIZATION = uuid.UUID(int=0)
REANCHOR_ACTION = "audit.reanchored"


class RecordLike(Protocol):
    """The hashed fields of an audit record (an ORM row, or a plain object in a migration)."""

    organization_id: uuid.UUID
    user_id: uuid.UUID | None
    action: str
    resource_type: str
    resource_id: uuid.UUID | None
    action_data: dict[str, Any]
    ip_address: str | None
    user_agent: str | None
    previous_hash: str
    created_at: datetime | None


def _canonical(record: RecordLike) -> bytes:
    content = {
        "organization_id": str(record.organization_id),
        "user_id": str(record.user_id) if record.user_id else None,
        "action": record.action,
        "resource_type": record.resource_type,
        "resource_id": str(record.resource_id) if record.resource_id else None,
        "action_data": record.action_data,
        "ip_address": record.ip_address,
        "user_agent": record.user_agent,
        "previous_hash": record.previous_hash,
        "created_at": iso(record.created_at),
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode()


def compute_hash(record: RecordLike) -> str:
    return hashlib.sha256(_canonical(record)).hexdigest()


def _lock_chain(session: Session, organization_id: uuid.UUID) -> None:
    # Two writers must not both read the same tail; SQLite serializes writers by itself.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"audit:{organization_id}"},
        )


def _tail_hash(session: Session, organization_id: uuid.UUID) -> str:
    query = (
        select(ImmutableAuditLog.record_hash)
        .where(ImmutableAuditLog.organization_id == organization_id)
        .order_by(ImmutableAuditLog.id.desc())
        .limit(1)
    )
    return session.scalar(query) or GENESIS_HASH


_TAILS = "accute_audit_tails"


def _known_tails(session: Session) -> dict[uuid.UUID, str] | None:
    """Chain tails this transaction appended, while it holds their locks (None inside a savepoint).

    A transaction that appends several records to one chain (a judged FL reply writes three) then
    needs neither the lock nor the tail query again. Inside a savepoint nothing is trusted or kept:
    its rollback would take the appended record with it. Nor before a transaction began.
    """
    outer = session.get_transaction()
    if outer is None or session.in_nested_transaction():
        session.info.pop(_TAILS, None)
        return None
    cached = session.info.get(_TAILS)
    if cached is None or cached[0] is not outer:
        cached = (outer, {})
        session.info[_TAILS] = cached
    tails: dict[uuid.UUID, str] = cached[1]
    return tails


def append(
    session: Session,
    *,
    organization_id: uuid.UUID | None,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID | None = None,
    data: dict[str, Any] | None = None,
    user_id: uuid.UUID | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> ImmutableAuditLog:
    """Append one record to the organization's chain, in the caller's transaction.

    ``data`` must never hold secrets: the audit log is readable by the organization's admins.
    """
    org = organization_id or SYSTEM_ORGANIZATION
    tails = _known_tails(session)
    previous = None if tails is None else tails.get(org)
    if previous is None:
        _lock_chain(session, org)
        previous = _tail_hash(session, org)
    # Microseconds kept: both backends store them, so the hash survives the round trip.
    created: datetime = utcnow()
    record = ImmutableAuditLog(
        organization_id=org,
        user_id=user_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        action_data=json.loads(json.dumps(data or {}, default=str)),
        ip_address=ip_address,
        user_agent=user_agent,
        previous_hash=previous,
        created_at=created,
    )
    record.record_hash = compute_hash(record)
    session.add(record)
    session.flush()
    if tails is not None:
        tails[org] = record.record_hash
    return record


@dataclass(frozen=True)
class ChainReport:
    organization_id: str
    records: int
    ok: bool
    first_bad_id: int | None
    reason: str | None
    reanchors: int = 0


def reanchor_mac(old_head: str, new_head: str, migration: str, rewritten: list[int]) -> str:
    """HMAC-SHA256 keyed with the old head over (migration, new head, rewritten ids)."""
    message = json.dumps(
        {"migration": migration, "new_head": new_head, "rewritten": rewritten},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return hmac.new(old_head.encode(), message, hashlib.sha256).hexdigest()


def reanchor_data(
    old_head: str, new_head: str, migration: str, reason: str, rewritten: list[int]
) -> dict[str, Any]:
    """The payload of an ``audit.reanchored`` record."""
    return {
        "migration": migration,
        "reason": reason,
        "old_head": old_head,
        "new_head": new_head,
        "rewritten": rewritten,
        "binding": {
            "alg": "hmac-sha256",
            "key": "old_head",
            "mac": reanchor_mac(old_head, new_head, migration, rewritten),
        },
    }


def rechain(chain: list[Any], start: int) -> str:
    """Recompute ``previous_hash``/``record_hash`` of ``chain[start:]`` in place; returns the new head."""
    previous = GENESIS_HASH if start == 0 else chain[start - 1].record_hash
    for record in chain[start:]:
        record.previous_hash = previous
        record.record_hash = compute_hash(record)
        previous = record.record_hash
    return previous


def _reanchor_problem(record: ImmutableAuditLog) -> str | None:
    data = record.action_data or {}
    binding = data.get("binding") or {}
    try:
        old_head, new_head = str(data["old_head"]), str(data["new_head"])
        migration, rewritten = str(data["migration"]), [int(i) for i in data["rewritten"]]
        mac = str(binding["mac"])
    except (KeyError, TypeError, ValueError):
        return "re-anchor record is incomplete"
    if new_head != record.previous_hash:
        return "re-anchor's new_head is not the head it follows"
    if binding.get("alg") != "hmac-sha256" or not hmac.compare_digest(
        mac, reanchor_mac(old_head, new_head, migration, rewritten)
    ):
        return "re-anchor's binding of old and new head does not verify"
    return None


def verify(session: Session, organization_id: uuid.UUID | None = None) -> list[ChainReport]:
    """Re-hash every record of each chain (or of one organization's) and report the first break."""
    query = select(ImmutableAuditLog).order_by(ImmutableAuditLog.organization_id, ImmutableAuditLog.id)
    if organization_id is not None:
        query = query.where(ImmutableAuditLog.organization_id == organization_id)
    records = session.scalars(query)
    return [
        _verify_chain(org, list(chain)) for org, chain in groupby(records, key=lambda r: r.organization_id)
    ]


def _verify_chain(organization_id: uuid.UUID, chain: list[ImmutableAuditLog]) -> ChainReport:
    expected_previous = GENESIS_HASH
    reanchors = 0
    for record in chain:
        if record.previous_hash != expected_previous:
            reason = "previous_hash does not match the record before it"
            return ChainReport(str(organization_id), len(chain), False, record.id, reason)
        if compute_hash(record) != record.record_hash:
            reason = "record_hash does not match the record's content"
            return ChainReport(str(organization_id), len(chain), False, record.id, reason)
        if record.action == REANCHOR_ACTION:
            problem = _reanchor_problem(record)
            if problem is not None:
                return ChainReport(str(organization_id), len(chain), False, record.id, problem)
            reanchors += 1
        expected_previous = record.record_hash
    return ChainReport(str(organization_id), len(chain), True, None, None, reanchors)
