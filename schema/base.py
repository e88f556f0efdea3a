"""Declarative base with a naming convention, so every constraint has a stable name on both backends."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schema.types import TimestampTZ, UUIDType, gen_random_uuid

# Names stay under PostgreSQL's 63-character limit for every table of the spec.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def uuid_pk() -> Mapped[uuid.UUID]:
    """``id UUID PRIMARY KEY DEFAULT gen_random_uuid()``."""
    return mapped_column(UUIDType, primary_key=True, default=uuid.uuid4, server_default=gen_random_uuid())


def created_at() -> Mapped[datetime | None]:
    """``created_at TIMESTAMPTZ DEFAULT NOW()`` (nullable, as the spec writes it)."""
    return mapped_column(TimestampTZ, server_default=func.now())


def updated_at() -> Mapped[datetime | None]:
    """``updated_at TIMESTAMPTZ DEFAULT NOW()``, refreshed by the ORM on every update."""
    return mapped_column(TimestampTZ, server_default=func.now(), onupdate=func.now())


def in_list(column: str, values: tuple[str, ...]) -> str:
    """SQL text of ``column IN ('a', 'b', ...)`` for a CHECK constraint."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


def ordered_index(name: str, model: type[Base], *columns: str, **dialect_kw: Any) -> Index:
    """An index whose columns may end in ' DESC', built on real columns so both backends reflect it."""
    table = model.__table__
    elements: list[Any] = []
    for spec in columns:
        column_name, _, order = spec.partition(" ")
        column = table.c[column_name]
        elements.append(column.desc() if order.upper() == "DESC" else column)
    return Index(name, *elements, **dialect_kw)
