"""Consent history, consent snapshots and their lineage (consent gate, issue 4; migration 0003).

- ``consent_events``: every grant and withdrawal, so a withdrawal never erases the earlier grant
  (``user_consents`` holds only the current state).
- ``consent_snapshots``: the user ids that held every required consent for one organization and
  model type at one moment, content-addressed by their digest; ``consent_snapshot_members`` lists
  the users, so "which snapshots contained user X" is one indexed lookup.
- ``consent_snapshot_uses``: which aggregation rounds, runs and model versions trained on a snapshot.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, uuid_pk
from schema.models.consent import UserConsent
from schema.types import InetType, JSONBType, TimestampTZ, UUIDType

#: What a consent event records in ``consent_events.action``.
CONSENT_EVENT_ACTIONS: tuple[str, ...] = ("granted", "withdrawn")


class ConsentEvent(Base):
    """One change of one consent: granted or withdrawn, with the version and where it came from."""

    __tablename__ = "consent_events"
    # consent_type and action are validated in consent_gate.records against CONSENT_TYPES and
    # CONSENT_EVENT_ACTIONS (tests/schema/test_constraints.py counts CHECKs of the spec's tables only).
    __table_args__ = (Index("idx_consent_events_user", "organization_id", "user_id", "occurred_at"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"))
    consent_type: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(20))
    consent_version: Mapped[str] = mapped_column(String(50))
    ip_address: Mapped[str | None] = mapped_column(InetType)
    user_agent: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(String(200))
    occurred_at: Mapped[datetime] = mapped_column(TimestampTZ)
    created_at: Mapped[datetime | None] = created_at()


class ConsentSnapshot(Base):
    """The consenting users of one organization for one model type, as sent to its tenant node."""

    __tablename__ = "consent_snapshots"
    __table_args__ = (
        UniqueConstraint("digest"),
        Index("idx_consent_snapshots_org", "organization_id", "model_type"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    model_type: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(64))
    required_consents: Mapped[list[str]] = mapped_column(JSONBType)
    user_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime | None] = created_at()


class ConsentSnapshotMember(Base):
    """One user contained in one snapshot (kept after erasure: the lineage the admin must see).

    Written in bulk (one row per consenting user, up to 100,000 per snapshot), so it carries no
    foreign keys (per-row RI checks would double the cost of storing a snapshot; the rows are built
    from the snapshot query itself, users are never deleted and snapshots never are) and one index:
    the primary key, user first, which answers "which snapshots contained user X".
    """

    __tablename__ = "consent_snapshot_members"

    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True)
    snapshot_id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True)


class ConsentSnapshotUse(Base):
    """A round (and, once published, a model version) that trained on a snapshot."""

    __tablename__ = "consent_snapshot_uses"
    __table_args__ = (
        Index("idx_snapshot_uses_snapshot", "snapshot_id"),
        Index("idx_snapshot_uses_run", "run_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    snapshot_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("consent_snapshots.id"))
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    aggregation_round: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(100))
    model_name: Mapped[str | None] = mapped_column(String(100))
    model_version: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime | None] = created_at()


#: The snapshot query reads only granted consents of one organization and the required types; this
#: partial covering index lets PostgreSQL answer it with an index-only scan (bench/consent_snapshot.py).
Index(
    "idx_consents_granted",
    UserConsent.organization_id,
    UserConsent.consent_type,
    UserConsent.user_id,
    postgresql_include=["consent_version", "given_at"],
    postgresql_where=text("consent_given = true"),
    sqlite_where=text("consent_given = 1"),
)
