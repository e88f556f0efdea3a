"""Insert many rows fast, in the caller's transaction: COPY on PostgreSQL, executemany elsewhere.

Used for snapshot members (up to one row per user of a tenant), for appending many audit records
at once, for bulk tenant preparation in simulations, and by benchmarks' loaders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ARRAY, JSON, Connection, Table
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

#: Rows per executemany call on SQLite (bounds the memory of one parameter list).
EXECUTEMANY_BATCH = 5000


def _json_columns(table: Table, columns: Sequence[str], dialect: Any) -> list[int]:
    """Positions of JSON columns (not arrays) as PostgreSQL stores them: COPY wants their text."""
    positions = []
    for position, name in enumerate(columns):
        impl = table.c[name].type.dialect_impl(dialect)
        if isinstance(impl, TypeDecorator):  # schema.types' portable types: what this dialect stores
            impl = impl.impl_instance
        if isinstance(impl, JSON) and not isinstance(impl, ARRAY):
            positions.append(position)
    return positions


def insert_rows(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert ``rows`` (tuples in the order of ``columns``) into ``table``; returns how many.

    Values are Python values as the ORM would take them; a JSON column's value may also be JSON
    text already (a ``str``), which is stored as is on PostgreSQL.
    """
    session.flush()  # rows the ORM still holds come first (foreign keys)
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        driver = connection.connection.driver_connection
        assert driver is not None  # a live psycopg connection inside the session's transaction
        names = ", ".join(f'"{table.c[name].name}"' for name in columns)
        as_json = _json_columns(table, columns, connection.dialect)
        count = 0
        with driver.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                if as_json:
                    row = list(row)
                    for position in as_json:
                        value = row[position]
                        if value is not None and not isinstance(value, str):
                            row[position] = json.dumps(value, default=str)
                copy.write_row(row)
                count += 1
        return count
    if any(column.default is not None for column in table.c if column.name not in columns):
        return _insert_with_defaults(connection, table, columns, rows)
    # Values converted by the columns' own bind processors, then the driver's executemany: what
    # SQLAlchemy's executemany does, without building and compiling a parameter dict per row.
    impls = [table.c[name].type.dialect_impl(connection.dialect) for name in columns]
    processors = [impl.bind_processor(connection.dialect) for impl in impls]
    placeholders = ", ".join("?" for _ in columns)
    names = ", ".join(f'"{table.c[name].name}"' for name in columns)
    statement = f'INSERT INTO "{table.name}" ({names}) VALUES ({placeholders})'
    count = 0
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(
            tuple(v if p is None or v is None else p(v) for p, v in zip(processors, row, strict=True))
        )
        if len(batch) >= EXECUTEMANY_BATCH:
            connection.exec_driver_sql(statement, batch)
            count += len(batch)
            batch = []
    if batch:
        connection.exec_driver_sql(statement, batch)
        count += len(batch)
    return count


def _insert_with_defaults(
    connection: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """SQLAlchemy's executemany, which fills in the Python-side defaults of omitted columns."""
    count = 0
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(dict(zip(columns, row, strict=True)))
        if len(batch) >= EXECUTEMANY_BATCH:
            connection.execute(table.insert(), batch)
            count += len(batch)
            batch = []
    if batch:
        connection.execute(table.insert(), batch)
        count += len(batch)
    return count
