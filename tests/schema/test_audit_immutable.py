"""The audit log is append-only in PostgreSQL itself (migration 0016): UPDATE, DELETE and TRUNCATE
are refused by triggers, for everyone but the table's owner on the documented maintenance path;
the downgrade removes the guard; dropping the table or schema still works."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from schema import audit, audit_guard, directory, migrate
from schema.db import transaction

pytestmark = pytest.mark.postgres

REFUSED = "immutable_audit_log is append-only"


def _chain(engine: Engine) -> tuple[uuid.UUID, list[int]]:
    with transaction(engine) as session:
        org = directory.create_organization(session, f"Audit {uuid.uuid4().hex[:6]}").id
        for i in range(2):
            audit.append(
                session, organization_id=org, action="test.step", resource_type="test", data={"i": i}
            )
    with engine.connect() as connection:
        ids = [r[0] for r in connection.exec_driver_sql("SELECT id FROM immutable_audit_log ORDER BY id")]
    return org, ids


STATEMENTS: dict[str, Callable[[list[int]], str]] = {
    "update": lambda ids: f"UPDATE immutable_audit_log SET action = 'test.forged' WHERE id = {ids[1]}",
    "delete": lambda ids: f"DELETE FROM immutable_audit_log WHERE id = {ids[1]}",
    "truncate": lambda ids: "TRUNCATE immutable_audit_log CASCADE",
}


@pytest.mark.parametrize("operation", sorted(STATEMENTS))
def test_update_delete_and_truncate_are_refused_by_the_database(pg_engine: Engine, operation: str) -> None:
    # Prepare: a chain of three records.
    org, ids = _chain(pg_engine)

    # Execute: straight SQL, as a bug or a stolen service credential would run it.
    with pytest.raises(DBAPIError) as refused, pg_engine.begin() as connection:
        connection.exec_driver_sql(STATEMENTS[operation](ids))

    # Assert: refused with the reason; every record still there and the chain intact.
    assert REFUSED in str(refused.value) and operation.upper() in str(refused.value)
    with transaction(pg_engine) as session:
        (report,) = audit.verify(session, org)
    assert report.ok and report.records == len(ids)


def test_the_maintenance_path_is_the_owners_only(pg_engine: Engine) -> None:
    # Prepare: a role that may UPDATE the table (a grant) but does not own it.
    org, ids = _chain(pg_engine)
    role = f"accute_t_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as connection:
        schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
        connection.exec_driver_sql(f"CREATE ROLE {role} NOLOGIN")
        connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
        connection.exec_driver_sql(f"GRANT SELECT, UPDATE ON immutable_audit_log TO {role}")
    try:
        # Execute: the non-owner sets the maintenance flag and tries; then the owner does.
        with pytest.raises(DBAPIError) as refused, pg_engine.begin() as connection:
            connection.exec_driver_sql(f"SET LOCAL ROLE {role}")
            audit_guard.maintenance(connection)
            connection.exec_driver_sql(STATEMENTS["update"](ids))
        with pg_engine.begin() as connection:
            audit_guard.maintenance(connection)
            connection.exec_driver_sql(STATEMENTS["update"](ids))
        # The setting ended with its transaction.
        with pg_engine.begin() as connection, pytest.raises(DBAPIError):
            connection.exec_driver_sql(STATEMENTS["delete"](ids))
    finally:
        with pg_engine.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")

    # Assert: the role was refused even with the flag; the owner's edit went through, and the chain shows it.
    assert REFUSED in str(refused.value)
    with transaction(pg_engine) as session:
        (report,) = audit.verify(session, org)
    assert not report.ok and report.first_bad_id == ids[1]


def test_downgrade_removes_the_guard_and_upgrade_restores_it(pg_engine: Engine) -> None:
    # Prepare
    _, ids = _chain(pg_engine)

    # Execute
    migrate.downgrade(pg_engine, "0012")
    with pg_engine.begin() as connection:
        changed = connection.exec_driver_sql(STATEMENTS["update"](ids)).rowcount
        functions = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_proc WHERE proname = 'accute_audit_append_only'"
            " AND pronamespace = current_schema()::regnamespace"  # this test's schema only
        ).scalar_one()
    migrate.upgrade(pg_engine)

    # Assert
    assert changed == 1 and functions == 0
    with pytest.raises(DBAPIError), pg_engine.begin() as connection:
        connection.exec_driver_sql(STATEMENTS["delete"](ids))


def test_drop_table_still_works(pg_engine: Engine) -> None:
    # The test fixtures drop whole schemas; a DBA may drop the table. Neither is a row change.
    _chain(pg_engine)
    with pg_engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE immutable_audit_log CASCADE")
        left = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'immutable_audit_log' AND schemaname = current_schema()"
            )
        ).scalar_one()
    assert left == 0
