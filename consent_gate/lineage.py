"""Lineage: which rounds, runs and model versions trained on which consent snapshots.

It answers "which model versions were trained with user X" (data subject access, and the record
kept after an erasure) through ``consent_snapshot_members``.

API (caller's transaction):
    record_snapshot_use(session, snapshot, aggregation_round, run_id=None, model_name=None,
                        model_version=None, organization_id=None) -> ConsentSnapshotUse
        # snapshot: the stored snapshot's id (UUID or its text) or its 64-hex digest
    link_model_version(session, run_id, model_name, model_version) -> int
        # fills model name/version on every use of the run that has none yet; returns the count
    user_lineage(session, organization_id, user_id) -> list[dict]
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from consent_gate import scope
from schema import audit
from schema.bulk import insert_rows
from schema.errors import InvalidInputError, NotFoundError
from schema.models import ConsentSnapshot, ConsentSnapshotMember, ConsentSnapshotUse
from schema.timeutil import iso, utcnow
from schema.validation import clean_name

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_USE_COLUMNS = (
    "id",
    "snapshot_id",
    "organization_id",
    "aggregation_round",
    "run_id",
    "model_name",
    "model_version",
    "created_at",
)
_INSERT_USE = ConsentSnapshotUse.__table__.insert()  # type: ignore[attr-defined]
_SNAPSHOT_TABLE: Table = ConsentSnapshot.__table__  # type: ignore[assignment]
_SNAPSHOTS_BY_ID = select(
    _SNAPSHOT_TABLE.c.id, _SNAPSHOT_TABLE.c.organization_id, _SNAPSHOT_TABLE.c.digest
).where(_SNAPSHOT_TABLE.c.id.in_(bindparam("ids", expanding=True)))


def _find_snapshot(session: Session, snapshot: str | uuid.UUID) -> ConsentSnapshot | None:
    if isinstance(snapshot, uuid.UUID):
        return session.get(ConsentSnapshot, snapshot)
    text = snapshot.strip().lower()
    if _DIGEST.match(text):
        return session.scalar(select(ConsentSnapshot).where(ConsentSnapshot.digest == text))
    try:
        return session.get(ConsentSnapshot, uuid.UUID(text))
    except ValueError:
        raise InvalidInputError(
            f"snapshot '{snapshot}' is neither a snapshot id nor a 64-character digest"
        ) from None


def _optional_label(value: str | None, what: str, max_length: int) -> str | None:
    return None if value is None else clean_name(value, what, max_length)


def record_snapshot_use(
    session: Session,
    snapshot: str | uuid.UUID,
    aggregation_round: int,
    run_id: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    organization_id: str | uuid.UUID | None = None,
) -> ConsentSnapshotUse:
    """Record that ``aggregation_round`` (of ``run_id``) trained on the stored ``snapshot``."""
    if isinstance(aggregation_round, bool) or not isinstance(aggregation_round, int) or aggregation_round < 0:
        raise InvalidInputError(f"aggregation round {aggregation_round!r} must be a non-negative integer")
    run = _optional_label(run_id, "run id", 100)
    name = _optional_label(model_name, "model name", 100)
    version = _optional_label(model_version, "model version", 50)
    stored = _find_snapshot(session, snapshot)
    if organization_id is not None:
        org_id = scope.organization(session, organization_id).id
        if stored is not None and stored.organization_id != org_id:
            stored = None  # another tenant's snapshot is reported as missing
    if stored is None:
        raise NotFoundError(f"consent snapshot {snapshot} does not exist; take one with take_snapshot")
    use = ConsentSnapshotUse(
        id=uuid.uuid4(),
        snapshot_id=stored.id,
        organization_id=stored.organization_id,
        aggregation_round=aggregation_round,
        run_id=run,
        model_name=name,
        model_version=version,
        created_at=utcnow(),
    )
    # A Core insert (the snapshot it names is stored already); the returned use is not in the session.
    session.connection().execute(_INSERT_USE, {column: getattr(use, column) for column in _USE_COLUMNS})
    entry = _use_entry(stored.id, stored.digest, aggregation_round, run, name, version)
    audit.append(
        session,
        organization_id=stored.organization_id,
        action=entry.action,
        resource_type=entry.resource_type,
        resource_id=entry.resource_id,
        data=entry.data,
    )
    return use


def record_snapshot_uses(
    session: Session,
    uses: Sequence[tuple[uuid.UUID, uuid.UUID]],
    aggregation_round: int,
    *,
    run_id: str,
    then: Mapping[uuid.UUID, Sequence[audit.AuditEntry]] | None = None,
) -> int:
    """``record_snapshot_use`` for many (organization id, snapshot id) pairs at once, as a round's
    commit records them: the snapshots checked in one query (each must be stored and belong to its
    organization, else ``NotFoundError``), the uses inserted in one statement, and each
    organization's audit records followed by its entries of ``then`` (the caller's records about
    the same round), every chain written by one ``audit.append_chains``. Returns the number of
    uses recorded."""
    if isinstance(aggregation_round, bool) or not isinstance(aggregation_round, int) or aggregation_round < 0:
        raise InvalidInputError(f"aggregation round {aggregation_round!r} must be a non-negative integer")
    run = clean_name(run_id, "run id", 100)
    if not uses:
        return 0
    found = {
        row.id: row
        for row in session.connection().execute(_SNAPSHOTS_BY_ID, {"ids": sorted({s for _, s in uses})})
    }
    created = utcnow()
    rows: list[tuple[Any, ...]] = []
    chains: dict[uuid.UUID, list[audit.AuditEntry]] = defaultdict(list)
    for organization_id, snapshot_id in sorted(uses):
        snapshot = found.get(snapshot_id)
        if snapshot is None or snapshot.organization_id != organization_id:
            raise NotFoundError(f"consent snapshot {snapshot_id} does not exist; take one with take_snapshot")
        rows.append((uuid.uuid4(), snapshot.id, organization_id, aggregation_round, run, created))
        chains[organization_id].append(
            _use_entry(snapshot.id, snapshot.digest, aggregation_round, run, None, None)
        )
    for organization_id, entries in (then or {}).items():
        chains[organization_id].extend(entries)
    insert_rows(
        session,
        ConsentSnapshotUse.__table__,  # type: ignore[arg-type]
        ("id", "snapshot_id", "organization_id", "aggregation_round", "run_id", "created_at"),
        rows,
    )
    audit.append_chains(session, dict(sorted(chains.items())))
    return len(rows)


def _use_entry(
    snapshot_id: uuid.UUID,
    digest: str,
    aggregation_round: int,
    run: str | None,
    model_name: str | None,
    model_version: str | None,
) -> audit.AuditEntry:
    """The audit record of a snapshot's use (the organization's chain)."""
    return audit.AuditEntry(
        action="consent.snapshot_used",
        resource_type="consent_snapshot",
        resource_id=snapshot_id,
        data={
            "aggregation_round": aggregation_round,
            "run_id": run,
            "model_name": model_name,
            "model_version": model_version,
            "digest": digest,
        },
    )


def link_model_version(session: Session, run_id: str, model_name: str, model_version: str) -> int:
    """Name the model version a run published on each of its snapshot uses that lacks one."""
    run = clean_name(run_id, "run id", 100)
    name = clean_name(model_name, "model name", 100)
    version = clean_name(model_version, "model version", 50)
    pending = select(ConsentSnapshotUse).where(
        ConsentSnapshotUse.run_id == run, ConsentSnapshotUse.model_version.is_(None)
    )
    uses = list(session.scalars(pending))
    if not uses:
        return 0
    session.execute(
        update(ConsentSnapshotUse)
        .where(ConsentSnapshotUse.id.in_([u.id for u in uses]))
        .values(model_name=name, model_version=version)
        .execution_options(synchronize_session="fetch")
    )
    by_org: dict[uuid.UUID, int] = defaultdict(int)
    for use in uses:
        by_org[use.organization_id] += 1
    for org_id, count in sorted(by_org.items()):
        audit.append(
            session,
            organization_id=org_id,
            action="consent.lineage_linked",
            resource_type="consent_snapshot_use",
            data={"run_id": run, "model_name": name, "model_version": version, "uses": count},
        )
    return len(uses)


def user_lineage(
    session: Session, organization_id: str | uuid.UUID, user_id: str | uuid.UUID
) -> list[dict[str, Any]]:
    """Every stored snapshot of the organization that contained the user, with the rounds and
    model versions that trained on it (oldest first)."""
    user = scope.member(session, organization_id, user_id)
    query = (
        select(ConsentSnapshot, ConsentSnapshotUse)
        .join(ConsentSnapshotMember, ConsentSnapshotMember.snapshot_id == ConsentSnapshot.id)
        .outerjoin(ConsentSnapshotUse, ConsentSnapshotUse.snapshot_id == ConsentSnapshot.id)
        .where(
            ConsentSnapshotMember.user_id == user.id, ConsentSnapshot.organization_id == user.organization_id
        )
        .order_by(ConsentSnapshot.created_at, ConsentSnapshot.id, ConsentSnapshotUse.aggregation_round)
    )
    lineage: dict[uuid.UUID, dict[str, Any]] = {}
    for snapshot, use in session.execute(query):
        entry = lineage.setdefault(
            snapshot.id,
            {
                "snapshot_id": str(snapshot.id),
                "model_type": snapshot.model_type,
                "digest": snapshot.digest,
                "taken_at": iso(snapshot.created_at),
                "uses": [],
            },
        )
        if use is not None:
            entry["uses"].append(
                {
                    "aggregation_round": use.aggregation_round,
                    "run_id": use.run_id,
                    "model_name": use.model_name,
                    "model_version": use.model_version,
                    "recorded_at": iso(use.created_at),
                }
            )
    return list(lineage.values())


def model_versions(lineage: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The distinct published model versions in a user's lineage, sorted."""
    seen = {
        (use["model_name"], use["model_version"])
        for entry in lineage
        for use in entry["uses"]
        if use["model_version"] is not None
    }
    return [
        {"model_name": n or "", "model_version": v} for n, v in sorted(seen, key=lambda p: (p[0] or "", p[1]))
    ]
