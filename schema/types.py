"""Column types and server defaults that are native on PostgreSQL and portable on SQLite.

The spec's SQL is PostgreSQL; SQLite is the embedded default. Each type below renders the spec's
PostgreSQL type there and the closest SQLite storage elsewhere, so one model serves both.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, DateTime, String, Text, Uuid
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

#: UUID on PostgreSQL, CHAR(32) hex on SQLite.
UUIDType = Uuid(as_uuid=True)

#: JSONB on PostgreSQL, JSON (text) on SQLite.
JSONBType = JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")

#: TEXT[] on PostgreSQL, a JSON list on SQLite.
TextArrayType = JSON().with_variant(postgresql.ARRAY(Text()), "postgresql")

#: INET on PostgreSQL, a string long enough for any IPv6 text form on SQLite.
InetType = String(45).with_variant(postgresql.INET(), "postgresql")

#: TIMESTAMPTZ on PostgreSQL.
TimestampTZ = DateTime(timezone=True)


class gen_random_uuid(FunctionElement[Any]):
    """Server-side UUID default: ``gen_random_uuid()`` on PostgreSQL, random hex on SQLite.

    The ORM also assigns ``uuid4()`` client-side; this default covers rows inserted by raw SQL
    (migrations' seeds, operators at a psql prompt).
    """

    type = UUIDType
    inherit_cache = True


@compiles(gen_random_uuid, "postgresql")
def _gen_random_uuid_pg(element: gen_random_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return "gen_random_uuid()"


@compiles(gen_random_uuid)
def _gen_random_uuid_default(element: gen_random_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite stores a non-native UUID as 32 lowercase hex characters.
    return "lower(hex(randomblob(16)))"
