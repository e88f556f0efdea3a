"""Organizations (tenants) and their users: the tables nearly every command reads, apart from the
other platform tables in ``schema.models.tenancy``."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, in_list, updated_at, uuid_pk
from schema.types import UUIDType
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
