"""Declarative base on ``schema.metadata.METADATA`` (its naming convention gives every constraint a
stable name on both backends), and the ORM column builders of the spec's common columns."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schema.metadata import METADATA, in_list
from schema.types import TimestampTZ, UUIDType, gen_random_uuid

__all__ = ["Base", "created_at", "in_list", "ordered_index", "updated_at", "uuid_pk"]


class Base(DeclarativeBase):
    metadata = METADATA


def uuid_pk() -> Mapped[uuid.UUID]:
    """``id UUID PRIMARY KEY DEFAULT gen_random_uuid()``."""
    return mapped_column(UUIDType, primary_key=True, default=uuid.uuid4, server_default=gen_random_uuid())


def created_at() -> Mapped[datetime | None]:
    """``created_at TIMESTAMPTZ DEFAULT NOW()`` (nullable, as the spec writes it)."""
    return mapped_column(TimestampTZ, server_default=func.now())


def updated_at() -> Mapped[datetime | None]:
    """``updated_at TIMESTAMPTZ DEFAULT NOW()``, refreshed by the ORM on every update."""
    return mapped_column(TimestampTZ, server_default=func.now(), onupdate=func.now())


def ordered_index(name: str, model: type[Base], *columns: str, **dialect_kw: Any) -> Index:
    """An index whose columns may end in ' DESC', built on real columns so both backends reflect it."""
    table = model.__table__
    elements: list[Any] = []
    for spec in columns:
        column_name, _, order = spec.partition(" ")
        column = table.c[column_name]
        elements.append(column.desc() if order.upper() == "DESC" else column)
    return Index(name, *elements, **dialect_kw)
