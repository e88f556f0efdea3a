"""The Fin(Ai)d hub outbox (spec §4, issue 13; migration 0013).

``hub_outbox`` holds one row per domain event, written by ``schema.events.append`` in the same
transaction as the change that causes it: a change that rolls back takes its event with it, one that
commits keeps it until the relay (``orchestrator/hub``) has it acknowledged by the broker or hub.

- ``sequence`` is the table's monotonic key: the relay publishes a tenant's events in this order
  (index ``idx_hub_outbox_org_seq``) and picks due rows by ``(status, next_attempt_at)``.
- ``event_id`` is the idempotency key sent with the event; a consumer deduplicates by it, since
  delivery is at least once.
- ``payload`` carries ids and numbers only, never personal data (each event type's pydantic model
  forbids other fields), so the table holds nothing a user's erasure must reach.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, in_list
from schema.types import JSONBType, TimestampTZ, UUIDType

#: ``pending``: waiting for (another) attempt; ``published``: acknowledged; ``dead``: gave up after
#: the retry policy's attempts, listed and replayed by an admin.
OUTBOX_STATUSES: tuple[str, ...] = ("pending", "published", "dead")


class HubOutbox(Base):
    """One domain event waiting for, or done with, publication to the hub."""

    __tablename__ = "hub_outbox"
    __table_args__ = (
        CheckConstraint(in_list("status", OUTBOX_STATUSES), name="status"),
        Index("idx_hub_outbox_due", "status", "next_attempt_at"),
        Index("idx_hub_outbox_org_seq", "organization_id", "sequence"),
        # Migration 0014 (the relay): published rows by time, for the operator's rate and latency.
        Index("idx_hub_outbox_published", "status", "published_at"),
    )

    # BIGSERIAL on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
    sequence: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(UUIDType, unique=True)
    event_type: Mapped[str] = mapped_column(String(100))
    schema_version: Mapped[int] = mapped_column(Integer)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    """The tenant (``tenant_id`` of the envelope); None for a platform-wide event."""
    correlation_id: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    occurred_at: Mapped[datetime] = mapped_column(TimestampTZ)
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(TimestampTZ)
    last_error: Mapped[str | None] = mapped_column(String(500))
    """The last failure, shortened; never a secret (no URL credentials, no token)."""
    published_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    # Migration 0014 (the relay): the lease of the relay publishing the row right now. A relay that
    # dies leaves it to expire; the row is then claimed again (at least once).
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claim_expires: Mapped[datetime | None] = mapped_column(TimestampTZ)
