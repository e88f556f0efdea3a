"""``organizations`` (tenants) and ``users``."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, ForeignKey, String, Table, UniqueConstraint, text

from schema.metadata import METADATA, created_at_column, id_column, in_list, updated_at_column
from schema.types import UUIDType
from schema.vocab import BILLING_MODELS

organizations = Table(
    "organizations",
    METADATA,
    id_column(),
    Column("name", String(255), nullable=False),
    Column(
        "billing_model",
        String(50),
        nullable=False,
        default="pay_as_you_go",
        server_default=text("'pay_as_you_go'"),
    ),
    created_at_column(),
    updated_at_column(),
    CheckConstraint(in_list("billing_model", BILLING_MODELS), name="billing_model"),
    UniqueConstraint("name"),
)

users = Table(
    "users",
    METADATA,
    id_column(),
    Column("organization_id", UUIDType, ForeignKey("organizations.id"), nullable=False, index=True),
    Column("email", String(320), nullable=False),
    created_at_column(),
    updated_at_column(),
    UniqueConstraint("organization_id", "email"),
)
