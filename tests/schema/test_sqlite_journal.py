"""SQLite files commit through a write-ahead log by default, durably; the rollback journal stays
available (``ACCUTE_SQLITE_JOURNAL_MODE=delete``); a database removed goes with its side files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from schema.config import Settings
from schema.db import make_engine, remove_sqlite_database

# A process that commits one row and is killed before it closes its connection: no checkpoint
# runs, so the committed row is in the WAL only.
KILLED_WRITER = """
import os, signal, sys
from schema.db import make_engine
engine = make_engine(f"sqlite:///{sys.argv[1]}")
with engine.begin() as connection:
    connection.exec_driver_sql("CREATE TABLE kept (value TEXT)")
with engine.begin() as connection:
    connection.exec_driver_sql("INSERT INTO kept VALUES ('committed')")
os.kill(os.getpid(), signal.SIGKILL)
"""


def _pragma(engine: Engine, name: str) -> object:
    with engine.connect() as connection:
        return connection.exec_driver_sql(f"PRAGMA {name}").scalar()


def _killed_writer(path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr


def test_a_file_database_commits_through_its_wal_with_full_sync(tmp_path: Path) -> None:
    # Prepare
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")

    # Execute
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (value TEXT)")
        connection.exec_driver_sql("INSERT INTO t VALUES ('x')")

    # Assert: WAL mode, and every connection syncs each commit (FULL = 2; NORMAL would not).
    assert _pragma(engine, "journal_mode") == "wal"
    assert _pragma(engine, "synchronous") == 2
    assert (tmp_path / "a.db-wal").exists()
    engine.dispose()


def test_the_rollback_journal_setting_converts_a_wal_file_back(tmp_path: Path) -> None:
    # Prepare: a file in WAL mode.
    url = f"sqlite:///{tmp_path / 'b.db'}"
    wal = make_engine(url)
    with wal.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (value TEXT)")
    wal.dispose()

    # Execute
    engine = make_engine(Settings(database_url=url, sqlite_journal_mode="delete"))
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO t VALUES ('x')")

    # Assert
    assert _pragma(engine, "journal_mode") == "delete"
    assert _pragma(engine, "synchronous") == 2
    assert not (tmp_path / "b.db-wal").exists()
    engine.dispose()


def test_an_in_memory_database_still_opens() -> None:
    engine = make_engine("sqlite://")

    assert _pragma(engine, "journal_mode") == "memory"
    engine.dispose()


def test_a_commit_in_the_wal_survives_a_killed_process(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "c.db"

    # Execute
    _killed_writer(path)

    # Assert: the commit is in the WAL the killed process left, and the next connection reads it.
    assert (tmp_path / "c.db-wal").stat().st_size > 0
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT value FROM kept").scalars().all() == ["committed"]
    engine.dispose()


def test_removing_a_database_removes_the_wal_a_crash_left(tmp_path: Path) -> None:
    """A WAL left next to a new file of the same name would be replayed into it."""
    # Prepare
    path = tmp_path / "d.db"
    _killed_writer(path)
    assert (tmp_path / "d.db-wal").exists()

    # Execute
    remove_sqlite_database(path)

    # Assert: no side file is left, and a new database at the path starts empty.
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT name FROM sqlite_master").all() == []
    engine.dispose()


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_settings_accept_both_journal_modes_only(mode: str) -> None:
    assert Settings(sqlite_journal_mode=mode).sqlite_journal_mode == mode  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Settings(sqlite_journal_mode="memory")  # type: ignore[arg-type]
