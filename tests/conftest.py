"""Shared fixtures: one isolated database per test, on SQLite and on PostgreSQL.

PostgreSQL tests get their own schema (search_path) in the server named by
ACCUTE_TEST_POSTGRES_URL. Outside CI an unreachable server skips them with the reason; in CI
(CI=true) it fails the run, so a green CI always means both backends were tested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import cache

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from schema import migrate
from schema.db import make_engine

POSTGRES_URL = os.environ.get("ACCUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@cache
def postgres_unavailable_reason() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL at {sa.make_url(POSTGRES_URL).render_as_string()} is unreachable: {exc}"
    return None


def require_postgres() -> None:
    reason = postgres_unavailable_reason()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI must test PostgreSQL; .ci/run starts it)")
    pytest.skip(reason)


def _postgres_schema_url() -> Iterator[str]:
    require_postgres()
    schema_name = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema_name}"')
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema_name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema_name}" CASCADE')
        admin.dispose()


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty, isolated database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'accute.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def empty_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """A database of each backend migrated to head."""
    migrate.upgrade(empty_engine)
    return empty_engine


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """A migrated PostgreSQL database alone, for tests of row locks and concurrency."""
    for url in _postgres_schema_url():
        engine = make_engine(url)
        migrate.upgrade(engine)
        yield engine
        engine.dispose()
