"""Organizations (tenants) and their users: the tables nearly every command reads, apart from the
other platform tables in ``schema.models.tenancy``. The tables are ``schema.tables.organization``'s
(Core, so read-only commands can query them without the ORM); these classes map them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Mapped

from schema.base import Base
from schema.tables.organization import organizations, users


class Organization(Base):
    """A tenant: one accounting firm."""

    __table__ = organizations

    id: Mapped[uuid.UUID]
    name: Mapped[str]
    billing_model: Mapped[str]
    created_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]


class User(Base):
    """A person at a tenant; consents and data subject requests hang off this row."""

    __table__ = users

    id: Mapped[uuid.UUID]
    organization_id: Mapped[uuid.UUID]
    email: Mapped[str]
    created_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
