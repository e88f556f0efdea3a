"""The hash-chained audit log (invariant 8): append a record, verify a chain end to end.

Each organization has its own chain, ordered by id: a record's ``record_hash`` is the SHA-256 of
its canonical content including the previous record's hash, so editing, deleting or reordering
any record breaks every hash after it. System-wide events use the nil UUID as organization.

Records carry ids, never personal data (issue 19): a personal value that must stay is sealed under
the user's data key (``schema.personal_data``), so erasure makes it unreadable without touching
the chain. A migration that must rewrite old payloads (0007 removed the emails of ``user.created``)
re-hashes the chain from the first rewritten record and appends an ``audit.reanchored`` record
naming the old head, the migration, the rewritten ids and the new head. Its HMAC, keyed with the
old head, binds the claim to that head (whoever kept the old head as an external anchor checks it);
the service's Ed25519 signature beside the chain (``schema.audit_signing``) says who made it.
``verify`` checks both for every re-anchor record it meets; an unsigned one is listed, not failed.

``compute_hash``, ``rechain`` and ``reanchor_data`` are the chain's format and migrations import
them on purpose: a migration must write exactly what ``verify`` of the same release accepts (a
frozen copy would drift from ``verify`` precisely when the format changes). The price is a rule:
never change them in place; a new format gets a new name and ``verify`` keeps accepting the old.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Table, bindparam, func, select, text
from sqlalchemy.orm import Session

from schema.bulk import insert_rows
from schema.models import ImmutableAuditLog
from schema.timeutil import iso, utcnow

if TYPE_CHECKING:
    from schema.audit_signing import SignatureBook

GENESIS_HASH = "0" * 64
SYSTEM_ORGANIZATION = uuid.UUID(int=0)
REANCHOR_ACTION = "audit.reanchored"
UNSIGNED = "unsigned"


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
    return _canonical_fields(
        record.organization_id,
        record.user_id,
        record.action,
        record.resource_type,
        record.resource_id,
        record.action_data,
        record.ip_address,
        record.user_agent,
        record.previous_hash,
        record.created_at,
    )


def _canonical_fields(
    organization_id: uuid.UUID,
    user_id: uuid.UUID | None,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID | None,
    action_data: Any,
    ip_address: str | None,
    user_agent: str | None,
    previous_hash: str,
    created_at: datetime | None,
) -> bytes:
    content = {
        "organization_id": str(organization_id),
        "user_id": str(user_id) if user_id else None,
        "action": action,
        "resource_type": resource_type,
        "resource_id": str(resource_id) if resource_id else None,
        "action_data": action_data,
        "ip_address": ip_address,
        "user_agent": user_agent,
        "previous_hash": previous_hash,
        "created_at": iso(created_at),
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
    # On the session's connection: records are written there too (``append``, ``insert_rows``).
    tail: str | None = session.connection().scalar(_TAIL, {"organization": organization_id})
    return tail or GENESIS_HASH


_LOG: Table = ImmutableAuditLog.__table__  # type: ignore[assignment]
_TAIL = (
    select(_LOG.c.record_hash)
    .where(_LOG.c.organization_id == bindparam("organization"))
    .order_by(_LOG.c.id.desc())
    .limit(1)
)


_TAILS = "accute_audit_tails"


def flush_pending(session: Session) -> None:
    """Flush the session if it holds unwritten changes (a no-op check otherwise): writers that
    insert through the session's connection keep the order the ORM would have given them."""
    if session.new or session.dirty or session.deleted:
        session.flush()


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
    # A Core insert on the session's connection (in its transaction and savepoint): the ORM's
    # unit of work cost about 1 ms a record on the server's hot path. Pending ORM changes are
    # flushed first, as the ORM insert did (callers may rely on it). The returned record is
    # detached from the session, with its id.
    flush_pending(session)
    values = {name: getattr(record, name) for name in _AUDIT_COLUMNS}
    record.id = session.connection().execute(_INSERT_RECORD, values).scalar_one()
    if tails is not None:
        tails[org] = record.record_hash
    return record


@dataclass(frozen=True)
class AuditEntry:
    """One record to append with ``append_chains`` (the arguments of ``append``, organization aside)."""

    action: str
    resource_type: str
    resource_id: uuid.UUID | None = None
    data: dict[str, Any] | None = None
    user_id: uuid.UUID | None = None


_AUDIT_COLUMNS = (
    "organization_id",
    "user_id",
    "action",
    "resource_type",
    "resource_id",
    "action_data",
    "ip_address",
    "user_agent",
    "previous_hash",
    "record_hash",
    "created_at",
)
_TAIL_QUERY_CHUNK = 500
_INSERT_RECORD = _LOG.insert().values({name: bindparam(name) for name in _AUDIT_COLUMNS}).returning(_LOG.c.id)


def _lock_chains(session: Session, organizations: Sequence[uuid.UUID]) -> None:
    """``_lock_chain`` for many chains in one round trip, in a fixed order (sorted keys)."""
    if session.get_bind().dialect.name == "postgresql" and organizations:
        keys = sorted(f"audit:{org}" for org in organizations)
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
                "FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS t(k, n) ORDER BY n"
            ),
            {"keys": keys},
        )


def _tail_hashes(session: Session, organizations: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The last record hash of each chain that has one (one query per few hundred chains)."""
    tails: dict[uuid.UUID, str] = {}
    for start in range(0, len(organizations), _TAIL_QUERY_CHUNK):
        chunk = list(organizations[start : start + _TAIL_QUERY_CHUNK])
        last_ids = (
            select(func.max(ImmutableAuditLog.id))
            .where(ImmutableAuditLog.organization_id.in_(chunk))
            .group_by(ImmutableAuditLog.organization_id)
        )
        query = select(ImmutableAuditLog.organization_id, ImmutableAuditLog.record_hash).where(
            ImmutableAuditLog.id.in_(last_ids)
        )
        tails.update({org: record_hash for org, record_hash in session.execute(query)})
    return tails


def append_chains(session: Session, chains: Mapping[uuid.UUID, Sequence[AuditEntry]]) -> int:
    """Append each organization's entries to its chain, in order, in the caller's transaction.

    What ``append`` does record by record, for many records and chains at once: the chains are
    locked and their tails read in a few statements, the hashes chained here, and the rows written
    by one bulk insert (COPY on PostgreSQL) in chain order, so ids follow each chain. Returns the
    number of records written.
    """
    organizations = [org for org, entries in chains.items() if entries]
    if not organizations:
        return 0
    known = _known_tails(session)
    unknown = [org for org in organizations if known is None or org not in known]
    _lock_chains(session, unknown)
    tails = {**(known or {}), **_tail_hashes(session, unknown)}
    created: datetime = utcnow()
    rows: list[tuple[Any, ...]] = []
    for org in organizations:
        previous = tails.get(org, GENESIS_HASH)
        for entry in chains[org]:
            data = json.loads(json.dumps(entry.data or {}, default=str))
            fields = (
                org,
                entry.user_id,
                entry.action,
                entry.resource_type,
                entry.resource_id,
                data,
                None,
                None,
                previous,
                created,
            )
            record_hash = hashlib.sha256(_canonical_fields(*fields)).hexdigest()
            rows.append((*fields[:-1], record_hash, created))  # the columns of _AUDIT_COLUMNS
            previous = record_hash
        tails[org] = previous
    written = insert_rows(session, ImmutableAuditLog.__table__, _AUDIT_COLUMNS, rows)  # type: ignore[arg-type]
    if known is not None:
        known.update({org: tails[org] for org in organizations})
    return written


@dataclass(frozen=True)
class ChainReport:
    organization_id: str
    records: int
    ok: bool
    first_bad_id: int | None
    reason: str | None
    reanchors: int = 0
    unsigned_reanchors: list[int] = field(default_factory=list)
    """Re-anchors with no service signature yet (``accute-fl audit sign-reanchors``)."""


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


_VERIFY_COLUMNS = (
    ImmutableAuditLog.id,
    ImmutableAuditLog.organization_id,
    ImmutableAuditLog.user_id,
    ImmutableAuditLog.action,
    ImmutableAuditLog.resource_type,
    ImmutableAuditLog.resource_id,
    ImmutableAuditLog.action_data,
    ImmutableAuditLog.ip_address,
    ImmutableAuditLog.user_agent,
    ImmutableAuditLog.previous_hash,
    ImmutableAuditLog.record_hash,
    ImmutableAuditLog.created_at,
)
_VERIFY_FETCH = 5000


def verify(
    session: Session,
    organization_id: uuid.UUID | None = None,
    *,
    signatures: SignatureBook | None = None,
) -> list[ChainReport]:
    """Re-hash every record of each chain (or of one organization's) and report the first break.

    Rows stream in chain order as plain tuples (no ORM objects kept), so memory stays that of one
    chain whatever the size of the log. Each re-anchor record is checked against its stored
    signature (``schema.audit_signing``; pass ``signatures`` to use a book whose keys were checked
    against the KEK): a signature that does not verify breaks the chain, a missing one is listed
    in ``unsigned_reanchors``.
    """
    if signatures is None:
        from schema import audit_signing

        signatures = audit_signing.load(session, organization_id)
    query = select(*_VERIFY_COLUMNS).order_by(ImmutableAuditLog.organization_id, ImmutableAuditLog.id)
    if organization_id is not None:
        query = query.where(ImmutableAuditLog.organization_id == organization_id)
    rows = session.execute(query.execution_options(yield_per=_VERIFY_FETCH))
    return [
        _verify_chain(org, chain, signatures) for org, chain in groupby(rows, key=lambda r: r.organization_id)
    ]


def _verify_chain(organization_id: uuid.UUID, chain: Iterable[Any], signatures: SignatureBook) -> ChainReport:
    expected_previous = GENESIS_HASH
    reanchors = 0
    unsigned: list[int] = []
    broken: tuple[int, str] | None = None
    count = 0
    for record in chain:
        count += 1
        if broken is not None:
            continue
        if record.previous_hash != expected_previous:
            broken = (record.id, "previous_hash does not match the record before it")
            continue
        if compute_hash(record) != record.record_hash:
            broken = (record.id, "record_hash does not match the record's content")
            continue
        if record.action == REANCHOR_ACTION:
            problem = _reanchor_problem(record) or signatures.problem(record)
            if problem == UNSIGNED:
                unsigned.append(record.id)
            elif problem is not None:
                broken = (record.id, problem)
                continue
            reanchors += 1
        expected_previous = record.record_hash
    if broken is not None:
        return ChainReport(str(organization_id), count, False, broken[0], broken[1], reanchors, unsigned)
    return ChainReport(str(organization_id), count, True, None, None, reanchors, unsigned)
