"""Insert many rows fast, in the caller's transaction: COPY on PostgreSQL, executemany elsewhere.

Used for snapshot members (up to one row per user of a tenant) and by the benchmark's loader.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session


def insert_rows(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert ``rows`` (tuples in the order of ``columns``) into ``table``; returns how many."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        driver = connection.connection.driver_connection
        assert driver is not None  # a live psycopg connection inside the session's transaction
        names = ", ".join(f'"{table.c[name].name}"' for name in columns)
        count = 0
        with driver.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        return count
    batch = [dict(zip(columns, row, strict=True)) for row in rows]
    if batch:
        connection.execute(table.insert(), batch)
    return len(batch)
