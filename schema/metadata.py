"""The one ``MetaData`` every table lives on, and column builders for the spec's common columns.

Core only (no ``sqlalchemy.orm``): the tables that read-only CLI commands query are defined as
Core ``Table``s on this metadata (``schema.tables``) and the ORM maps them, so those commands
never import the ORM. ``schema.base.Base`` uses this metadata.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Column, MetaData, func

from schema.types import TimestampTZ, UUIDType, gen_random_uuid

# Names stay under PostgreSQL's 63-character limit for every table of the spec.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

METADATA = MetaData(naming_convention=NAMING_CONVENTION)


def id_column() -> Column[uuid.UUID]:
    """``id UUID PRIMARY KEY DEFAULT gen_random_uuid()`` (``uuid4()`` assigned client-side too)."""
    return Column("id", UUIDType, primary_key=True, default=uuid.uuid4, server_default=gen_random_uuid())


def created_at_column() -> Column[object]:
    """``created_at TIMESTAMPTZ DEFAULT NOW()`` (nullable, as the spec writes it)."""
    return Column("created_at", TimestampTZ, server_default=func.now())


def updated_at_column() -> Column[object]:
    """``updated_at TIMESTAMPTZ DEFAULT NOW()``, refreshed on every update."""
    return Column("updated_at", TimestampTZ, server_default=func.now(), onupdate=func.now())


def in_list(column: str, values: tuple[str, ...]) -> str:
    """SQL text of ``column IN ('a', 'b', ...)`` for a CHECK constraint."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"
