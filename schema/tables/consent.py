"""Consent tables (spec §5.1): ``user_consents`` and ``data_subject_requests``."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from schema.metadata import METADATA, created_at_column, id_column, in_list, updated_at_column
from schema.types import InetType, JSONBType, TimestampTZ, UUIDType
from schema.vocab import CONSENT_TYPES, DSR_REQUEST_TYPES, DSR_STATUSES

user_consents = Table(
    "user_consents",
    METADATA,
    id_column(),
    Column("organization_id", UUIDType, ForeignKey("organizations.id"), nullable=False),
    Column("user_id", UUIDType, ForeignKey("users.id"), nullable=False),
    Column("consent_type", String(100), nullable=False),
    Column("consent_given", Boolean, nullable=False),
    Column("consent_version", String(50), nullable=False),
    Column("ip_address", InetType),
    Column("user_agent", Text),
    Column("given_at", TimestampTZ),
    Column("withdrawn_at", TimestampTZ),
    created_at_column(),
    updated_at_column(),
    CheckConstraint(in_list("consent_type", CONSENT_TYPES), name="consent_type"),
    UniqueConstraint("organization_id", "user_id", "consent_type"),
    Index("idx_consents_user", "organization_id", "user_id"),
    Index("idx_consents_type", "consent_type", "consent_given"),
)

data_subject_requests = Table(
    "data_subject_requests",
    METADATA,
    id_column(),
    Column("organization_id", UUIDType, ForeignKey("organizations.id"), nullable=False),
    Column("user_id", UUIDType, ForeignKey("users.id"), nullable=False),
    Column("request_type", String(50), nullable=False),
    Column("status", String(50), nullable=False, default="pending", server_default=text("'pending'")),
    Column("request_details", JSONBType, nullable=False),
    Column("response_details", JSONBType),
    Column("deadline", TimestampTZ, nullable=False),
    Column("completed_at", TimestampTZ),
    Column("processed_by", UUIDType, ForeignKey("users.id")),
    created_at_column(),
    CheckConstraint(in_list("request_type", DSR_REQUEST_TYPES), name="request_type"),
    CheckConstraint(in_list("status", DSR_STATUSES), name="status"),
    Index("idx_dsr_status", "status", "deadline"),
    Index("idx_dsr_user", "organization_id", "user_id"),
)
