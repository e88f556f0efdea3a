"""Minimal versions of the platform tables that the spec's tables reference.

Accute proper has 200+ tables; these carry only what the federated learning coordinator and the
cascade need, with the exact names the spec's foreign keys use ("agentSessions", "trustedDevices").
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Numeric, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, in_list, updated_at, uuid_pk
from schema.types import TimestampTZ, UUIDType
from schema.vocab import BILLING_MODELS


class Organization(Base):
    """A tenant: one accounting firm."""

    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint(in_list("billing_model", BILLING_MODELS), name="billing_model"),
        UniqueConstraint("name"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255))
    billing_model: Mapped[str] = mapped_column(
        String(50), default="pay_as_you_go", server_default=text("'pay_as_you_go'")
    )
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class User(Base):
    """A person at a tenant; consents and data subject requests hang off this row."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("organization_id", "email"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class Workspace(Base):
    """A sub-unit of a tenant; LLM configs may be overridden per workspace."""

    __tablename__ = "workspaces"

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime | None] = created_at()


class UserSession(Base):
    """A login session (referenced by behavioral_biometrics)."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    created_at: Mapped[datetime | None] = created_at()


class AgentSession(Base):
    """A conversation with one of the 12 agents (referenced by the inference and usage logs)."""

    __tablename__ = "agentSessions"

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("users.id"))
    agent_slug: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime | None] = created_at()


class TrustedDevice(Base):
    """A device a user has enrolled (referenced by zero_trust_access_log)."""

    __tablename__ = "trustedDevices"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"), index=True)
    device_fingerprint: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime | None] = created_at()


class Invoice(Base):
    """An invoice to a tenant (fallback billing links to one)."""

    __tablename__ = "invoices"

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"), index=True)
    amount_usd: Mapped[Decimal] = mapped_column(Numeric(12, 4), default=Decimal(0), server_default=text("0"))
    status: Mapped[str] = mapped_column(String(50), default="draft", server_default=text("'draft'"))
    created_at: Mapped[datetime | None] = created_at()
