"""Engine and session factory; the only place that turns a database URL into connections.

Connection problems become one-line ``DatabaseUnavailableError``s that never show a password.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from schema.config import Settings, SqliteJournalMode
from schema.errors import ConfigurationError, DatabaseUnavailableError

if TYPE_CHECKING:  # the ORM is imported by the first session: read-only commands never need it
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("accute.schema")

SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def parse_database_url(raw: str) -> URL:
    """Validate a URL for a backend we support, with a message that says how to fix it."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(
            "ACCUTE_DATABASE_URL is not a database URL; use sqlite:///path/to/file.db or "
            "postgresql+psycopg://user@host:5432/dbname"
        ) from None
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"ACCUTE_DATABASE_URL uses unsupported backend '{url.get_backend_name()}'; "
            "use sqlite:/// or postgresql+psycopg://"
        )
    if url.get_backend_name() == "postgresql" and url.drivername not in ("postgresql", "postgresql+psycopg"):
        raise ConfigurationError(
            f"ACCUTE_DATABASE_URL driver '{url.drivername}' is not installed; use postgresql+psycopg://"
        )
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def describe_url(url: URL) -> str:
    """The URL as it may appear in logs and errors: password hidden."""
    return url.render_as_string(hide_password=True)


#: SQLite's side files next to a database file: the WAL and its shared-memory index (WAL mode),
#: the rollback journal (the other modes). A crash leaves them behind; they belong to that file.
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def _sqlite_pragmas(journal_mode: SqliteJournalMode) -> Callable[[Any, Any], None]:
    """The connect hook: per-connection settings, and the file's journal mode.

    ``synchronous=FULL`` on every connection: a commit returns once it is on disk, in either mode
    (in WAL mode with one fsync of the WAL; ``NORMAL`` would let a power cut undo a commit).
    """

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # SQLite enforces foreign keys only when asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        # The journal mode is the file's (it persists); switching takes the file's write lock for
        # a moment, so it is asked only when the file is in another mode.
        current = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if current in ("delete", "wal") and current != journal_mode:
            try:
                cursor.execute(f"PRAGMA journal_mode={journal_mode}")
            except sqlite3.OperationalError as exc:  # another connection held the file: next time
                log.warning("SQLite journal mode stays %s for now (%s)", current, exc)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    return on_connect


def remove_sqlite_database(database: Path) -> None:
    """Delete an SQLite database file with its side files.

    A WAL or hot journal left next to a new file of the same name would be replayed into it."""
    for path in (database, *(database.with_name(database.name + s) for s in SQLITE_SIDE_SUFFIXES)):
        path.unlink(missing_ok=True)


def make_engine(
    settings: Settings | str,
    connect_timeout_s: int = 5,
    sqlite_journal_mode: SqliteJournalMode = "wal",
) -> Engine:
    """Build an engine for the configured URL; nothing connects until first use.

    A bare URL waits ``connect_timeout_s`` for a PostgreSQL connection and puts an SQLite file in
    ``sqlite_journal_mode``; ``Settings`` carry their own.
    """
    raw = settings if isinstance(settings, str) else settings.database_url
    timeout = connect_timeout_s if isinstance(settings, str) else settings.database_connect_timeout_s
    journal_mode = sqlite_journal_mode if isinstance(settings, str) else settings.sqlite_journal_mode
    url = parse_database_url(raw)
    try:
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                parent = Path(database).expanduser().resolve().parent
                if not parent.is_dir():
                    raise ConfigurationError(
                        f"the SQLite file's folder {parent} does not exist; create it or change "
                        "ACCUTE_DATABASE_URL"
                    )
            engine = create_engine(url, connect_args={"timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas(journal_mode))
        else:
            engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": timeout})
    except NoSuchModuleError:
        raise ConfigurationError(
            f"no driver for '{url.drivername}'; use sqlite:/// or postgresql+psycopg://"
        ) from None
    return engine


def check_connection(engine: Engine) -> None:
    """Connect once, turning failure into a one-line error."""
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise unavailable(engine, exc) from None


def unavailable(engine: Engine, exc: BaseException) -> DatabaseUnavailableError:
    """The one-line error for a database we cannot use; the driver's first line says why."""
    original = getattr(exc, "orig", exc)
    reason = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    if isinstance(original, sqlite3.Error):
        reason = f"sqlite: {reason}"
    return DatabaseUnavailableError(
        f"cannot use the database at {describe_url(engine.url)} ({reason}); "
        "check ACCUTE_DATABASE_URL and that the server is running"
    )


def sqlite_file_missing(engine: Engine) -> Path | None:
    """The path of an SQLite database file that does not exist yet, else None."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database).expanduser().resolve()
    return None if path.exists() else path


def session_factory(engine: Engine) -> sessionmaker[Session]:
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, connection errors made readable."""
    factory = session_factory(engine)
    try:
        with factory.begin() as session:
            yield session
    except OperationalError as exc:
        raise unavailable(engine, exc) from None


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for Core reads (rolled back at the end), connection errors made readable.

    What lists rows without writing uses this rather than ``transaction``: no ORM import.
    """
    try:
        with engine.connect() as connection:
            yield connection
    except OperationalError as exc:
        raise unavailable(engine, exc) from None
