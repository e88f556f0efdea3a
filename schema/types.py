"""Column types and server defaults that are native on PostgreSQL and portable on SQLite.

The spec's SQL is PostgreSQL; SQLite is the embedded default. Each type below renders the spec's
PostgreSQL type there and the closest SQLite storage elsewhere, so one model serves both.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, DateTime, String, Text, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

#: UUID on PostgreSQL, CHAR(32) hex on SQLite.
UUIDType = Uuid(as_uuid=True)


class _OnPostgres(TypeDecorator[Any]):
    """``impl`` everywhere but PostgreSQL, where the native type ``native()`` is used.

    A ``with_variant`` would do the same but needs the PostgreSQL dialect's types at import time:
    importing ``sqlalchemy.dialects.postgresql`` (and its driver modules) cost every SQLite CLI
    command ~30 ms of start-up. The PostgreSQL type is built when a PostgreSQL dialect asks for it.
    """

    impl: Any = JSON
    cache_ok = True

    @staticmethod
    def native() -> TypeEngine[Any]:
        raise NotImplementedError

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(self.native())
        return dialect.type_descriptor(self.impl_instance)


class _Jsonb(_OnPostgres):
    cache_ok = True

    @staticmethod
    def native() -> TypeEngine[Any]:
        from sqlalchemy.dialects.postgresql import JSONB

        return JSONB(astext_type=Text())


class _TextArray(_OnPostgres):
    cache_ok = True

    @staticmethod
    def native() -> TypeEngine[Any]:
        from sqlalchemy.dialects.postgresql import ARRAY

        return ARRAY(Text())


class _Inet(_OnPostgres):
    impl = String
    cache_ok = True

    @staticmethod
    def native() -> TypeEngine[Any]:
        from sqlalchemy.dialects.postgresql import INET

        return INET()


#: JSONB on PostgreSQL, JSON (text) on SQLite.
JSONBType = _Jsonb()

#: TEXT[] on PostgreSQL, a JSON list on SQLite.
TextArrayType = _TextArray()

#: INET on PostgreSQL, a string long enough for any IPv6 text form on SQLite.
InetType = _Inet(45)

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
