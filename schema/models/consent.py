"""Consent tables (spec §5.1): what each user allowed, and their data subject requests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, in_list, updated_at, uuid_pk
from schema.types import InetType, JSONBType, TimestampTZ, UUIDType
from schema.vocab import CONSENT_TYPES, DSR_REQUEST_TYPES, DSR_STATUSES


class UserConsent(Base):
    """The current state of one consent type for one user of one organization."""

    __tablename__ = "user_consents"
    __table_args__ = (
        CheckConstraint(in_list("consent_type", CONSENT_TYPES), name="consent_type"),
        UniqueConstraint("organization_id", "user_id", "consent_type"),
        Index("idx_consents_user", "organization_id", "user_id"),
        Index("idx_consents_type", "consent_type", "consent_given"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"))
    consent_type: Mapped[str] = mapped_column(String(100))
    consent_given: Mapped[bool] = mapped_column(Boolean)
    consent_version: Mapped[str] = mapped_column(String(50))
    ip_address: Mapped[str | None] = mapped_column(InetType)
    user_agent: Mapped[str | None] = mapped_column(Text)
    given_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    withdrawn_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class DataSubjectRequest(Base):
    """A GDPR/CCPA request; the deadline is 30 days after filing."""

    __tablename__ = "data_subject_requests"
    __table_args__ = (
        CheckConstraint(in_list("request_type", DSR_REQUEST_TYPES), name="request_type"),
        CheckConstraint(in_list("status", DSR_STATUSES), name="status"),
        Index("idx_dsr_status", "status", "deadline"),
        Index("idx_dsr_user", "organization_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"))
    request_type: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(50), default="pending", server_default=text("'pending'"))
    request_details: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    response_details: Mapped[dict[str, Any] | None] = mapped_column(JSONBType)
    deadline: Mapped[datetime] = mapped_column(TimestampTZ)
    completed_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    processed_by: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("users.id"))
    created_at: Mapped[datetime | None] = created_at()
