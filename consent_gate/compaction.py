"""After an erasure commits: rewrite the touched tables so no erased byte stays in the database files.

Deleting or updating a row does not remove its bytes:

- SQLite leaves the old row image in the page's free space or on free pages (unless the library
  was built with ``SECURE_DELETE``, as Debian's is: most builds are not), and in the WAL until a
  checkpoint. ``VACUUM`` rewrites the whole file from the live rows; ``wal_checkpoint(TRUNCATE)``
  before and after empties the WAL.
- PostgreSQL keeps the old row version (a dead tuple) until vacuum. Plain ``VACUUM`` frees the
  space but does not zero it: measured on PostgreSQL 15, the old ``user_consents`` row with the
  user agent was still in the table file after it. ``VACUUM FULL`` writes each table and its
  indexes to new files and unlinks the old ones; it holds an ACCESS EXCLUSIVE lock on the table
  meanwhile (milliseconds for small tables, see BENCHMARKS.md), so a lock timeout bounds the wait
  and a table it could not lock is reported, to be compacted again later
  (``accute-fl dsr compact``). ``VACUUM FULL`` also copies every row an open snapshot may still
  see (any session of the database older than the erasure, in any schema): compaction first waits
  a few seconds for those sessions to end, and reports the ones that did not.

Out of reach here, by design of both engines: PostgreSQL's WAL segments, their archive and
replicas (the old row is in the WAL until the segments are recycled or expire from the archive),
and every backup or dump taken before the erasure. They expire with their retention; the README's
erasure section says how long.

Best effort: a failure is logged and reported, never raised, because the erasure itself has
already committed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger("accute.consent_gate")

LOCK_TIMEOUT = "5s"
SNAPSHOT_WAIT_S = 10.0
NOT_REACHED = "WAL archives, replicas and backups taken before the erasure expire with their retention"


def compact(engine: Engine, tables: Sequence[str], wait_s: float = SNAPSHOT_WAIT_S) -> dict[str, Any]:
    """Rewrite ``tables`` (PostgreSQL) or the whole file (SQLite); returns what was done.

    On PostgreSQL it first waits up to ``wait_s`` for sessions older than the erasure to end: while
    one is open, ``VACUUM FULL`` must keep the replaced rows it may still see.
    """
    if engine.dialect.name == "sqlite":
        return _compact_sqlite(engine)
    return _compact_postgres(engine, tables, wait_s)


def _compact_sqlite(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            raw.execute("VACUUM")
            busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            log.warning("erasure compaction: VACUUM failed (%s); run `accute-fl dsr compact` later", exc)
            return {"status": "incomplete", "reason": f"VACUUM failed: {exc}", "not_reached": NOT_REACHED}
    if busy:
        log.warning("erasure compaction: a reader kept the WAL from being truncated")
        return {
            "status": "incomplete",
            "reason": "a reader kept the WAL from being truncated; run `accute-fl dsr compact` again",
            "not_reached": NOT_REACHED,
        }
    return {"status": "vacuumed", "tables": ["(whole file)"], "not_reached": NOT_REACHED}


# Sessions whose snapshot or transaction is older than ``:horizon`` (lazy vacuums excepted: their
# xmin does not hold back another vacuum). Their xmin is what makes VACUUM FULL keep a dead row.
_OLDER_SESSIONS = text(
    "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
    "AND datname = current_database() AND backend_type <> 'autovacuum worker' "
    "AND GREATEST(COALESCE(age(backend_xmin), 0), COALESCE(age(backend_xid), 0)) "
    "> age(xid(CAST(:horizon AS xid8)))"
)


def _wait_for_older_sessions(connection: Connection, wait_s: float) -> list[int]:
    """Wait (at most ``wait_s``) until no other session may still see rows the erasure replaced;
    returns the pids still in the way (empty when none)."""
    horizon = connection.scalar(text("SELECT pg_snapshot_xmax(pg_current_snapshot())"))
    deadline = time.monotonic() + wait_s
    while True:
        pids = list(connection.scalars(_OLDER_SESSIONS, {"horizon": str(horizon)}))
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.1)


def _compact_postgres(engine: Engine, tables: Sequence[str], wait_s: float) -> dict[str, Any]:
    done: list[str] = []
    failed: dict[str, str] = {}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        quote = connection.dialect.identifier_preparer.quote
        older = _wait_for_older_sessions(connection, wait_s)
        connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        try:
            for table in tables:
                try:
                    connection.exec_driver_sql(f"VACUUM (FULL) {quote(table)}")
                    done.append(table)
                except DBAPIError as exc:
                    reason = str(exc.orig or exc).strip().splitlines()[0]
                    failed[table] = reason
                    log.warning("erasure compaction: VACUUM FULL %s failed (%s)", table, reason)
        finally:
            connection.exec_driver_sql("RESET lock_timeout")
    report: dict[str, Any] = {
        "status": "incomplete" if failed or older else "vacuumed",
        "tables": done,
        "not_reached": NOT_REACHED,
    }
    if failed:
        report["failed"] = failed
    if older:
        log.warning("erasure compaction: sessions %s were older than the erasure; old rows may remain", older)
        report["older_sessions"] = older
    if failed or older:
        report["reason"] = (
            "a table was busy or a session older than the erasure was open; run `accute-fl dsr compact` again"
        )
    return report
