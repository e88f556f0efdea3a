"""The audit chain's table (spec §3.2), apart from the other security tables: every audited write
imports it, and a command should not pay for six tables it does not touch."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, ordered_index
from schema.types import InetType, JSONBType, UUIDType


class ImmutableAuditLog(Base):
    """Append-only, hash-chained record of every state change (invariant 8)."""

    __tablename__ = "immutable_audit_log"
    __table_args__ = (Index("idx_audit_hash", "record_hash"),)

    # BIGSERIAL on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    action: Mapped[str] = mapped_column(String(100))
    resource_type: Mapped[str] = mapped_column(String(100))
    resource_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    action_data: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    ip_address: Mapped[str | None] = mapped_column(InetType)
    user_agent: Mapped[str | None] = mapped_column(Text)
    previous_hash: Mapped[str] = mapped_column(String(128))
    record_hash: Mapped[str] = mapped_column(String(128))
    blockchain_tx_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime | None] = created_at()


ordered_index("idx_audit_org", ImmutableAuditLog, "organization_id", "created_at DESC")
