"""Minimal versions of the platform tables that the spec's tables reference.

Accute proper has 200+ tables; these carry only what the federated learning coordinator and the
cascade need, with the exact names the spec's foreign keys use ("agentSessions", "trustedDevices").
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Numeric, String, text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, uuid_pk

# Organizations and users, which nearly every command reads, have their own module.
from schema.models.organization import Organization, User  # noqa: F401
from schema.types import TimestampTZ, UUIDType


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
