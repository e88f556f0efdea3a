"""The audit chain detects any edit, deletion or reordering, per organization, on both backends."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from schema import audit, audit_guard, directory
from schema.db import transaction


def _org(engine: Engine, name: str) -> uuid.UUID:
    with transaction(engine) as session:
        return directory.create_organization(session, name).id


def _append(engine: Engine, org: uuid.UUID, n: int) -> None:
    for i in range(n):
        with transaction(engine) as session:
            audit.append(
                session, organization_id=org, action="test.step", resource_type="test", data={"i": i}
            )


def _report(engine: Engine, org: uuid.UUID) -> audit.ChainReport:
    with transaction(engine) as session:
        (report,) = audit.verify(session, org)
    return report


def test_intact_chain_verifies(engine: Engine) -> None:
    org = _org(engine, "Chain Co")
    _append(engine, org, 4)
    report = _report(engine, org)
    assert report.ok
    assert report.records == 5  # organization.created + 4


def test_edited_record_breaks_the_chain_at_that_record(engine: Engine) -> None:
    # Prepare
    org = _org(engine, "Edit Co")
    _append(engine, org, 3)
    with engine.connect() as connection:
        ids = [r[0] for r in connection.exec_driver_sql("SELECT id FROM immutable_audit_log ORDER BY id")]
    table = sa.table("immutable_audit_log", sa.column("id"), sa.column("action"))

    # Execute: someone rewrites history (on PostgreSQL the table's owner, past the append-only
    # trigger: only the chain can catch an owner).
    with engine.begin() as connection:
        audit_guard.maintenance(connection)
        connection.execute(table.update().where(table.c.id == ids[2]).values(action="test.forged"))

    # Assert
    report = _report(engine, org)
    assert not report.ok
    assert report.first_bad_id == ids[2]
    assert "record_hash" in (report.reason or "")


def test_deleted_record_breaks_the_chain_after_it(engine: Engine) -> None:
    org = _org(engine, "Delete Co")
    _append(engine, org, 3)
    with engine.connect() as connection:
        ids = [r[0] for r in connection.exec_driver_sql("SELECT id FROM immutable_audit_log ORDER BY id")]
    with engine.begin() as connection:
        audit_guard.maintenance(connection)
        connection.execute(sa.text("DELETE FROM immutable_audit_log WHERE id = :id"), {"id": ids[1]})
    report = _report(engine, org)
    assert not report.ok
    assert report.first_bad_id == ids[2]


def test_chains_are_per_organization(engine: Engine) -> None:
    org_a, org_b = _org(engine, "A"), _org(engine, "B")
    _append(engine, org_a, 2)
    _append(engine, org_b, 1)
    with transaction(engine) as session:
        reports = {r.organization_id: r for r in audit.verify(session)}
    assert reports[str(org_a)].records == 3
    assert reports[str(org_b)].records == 2
    assert all(r.ok for r in reports.values())


@pytest.mark.postgres
def test_concurrent_writers_keep_one_chain(pg_engine: Engine) -> None:
    engine = pg_engine
    org = _org(engine, "Busy Co")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            _append(engine, org, 10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = _report(engine, org)
    assert report.ok
    assert report.records == 41


def test_several_appends_in_one_transaction_chain_to_each_other(engine: Engine) -> None:
    org = _org(engine, "Batch Co")
    with transaction(engine) as session:
        records = [
            audit.append(
                session, organization_id=org, action="test.step", resource_type="test", data={"i": i}
            )
            for i in range(3)
        ]
    assert [r.previous_hash for r in records[1:]] == [r.record_hash for r in records[:-1]]
    assert _report(engine, org).ok


def test_an_append_rolled_back_with_its_savepoint_is_not_chained_to(engine: Engine) -> None:
    # Prepare: an append in the transaction, then one inside a savepoint that rolls back.
    org = _org(engine, "Savepoint Co")
    with transaction(engine) as session:
        kept = audit.append(session, organization_id=org, action="test.kept", resource_type="test")
        savepoint = session.begin_nested()
        audit.append(session, organization_id=org, action="test.lost", resource_type="test")
        savepoint.rollback()
        # Execute: the next append must chain to the record that survived.
        after = audit.append(session, organization_id=org, action="test.after", resource_type="test")
    # Assert
    assert after.previous_hash == kept.record_hash
    report = _report(engine, org)
    assert report.ok
    assert report.records == 3  # organization.created, kept, after


def test_a_session_reused_across_transactions_reads_the_tail_again(engine: Engine) -> None:
    # Prepare: one Session, two transactions, another writer appending in between.
    from sqlalchemy.orm import Session

    org = _org(engine, "Reuse Co")
    with Session(engine) as session:
        with session.begin():
            audit.append(session, organization_id=org, action="test.first", resource_type="test")
        _append(engine, org, 1)  # another session extends the chain meanwhile
        # Execute
        with session.begin():
            audit.append(session, organization_id=org, action="test.second", resource_type="test")
    # Assert
    assert _report(engine, org).ok


def test_a_reanchor_must_bind_the_head_it_follows(engine: Engine) -> None:
    # Prepare: a genuine re-anchor at the tail, then one naming a head it does not follow.
    org = _org(engine, "Anchor Co")
    _append(engine, org, 2)
    with transaction(engine) as session:
        tail = session.scalars(
            sa.select(audit.ImmutableAuditLog.record_hash)
            .where(audit.ImmutableAuditLog.organization_id == org)
            .order_by(audit.ImmutableAuditLog.id.desc())
        ).first()
        assert tail is not None
        data = audit.reanchor_data("a" * 64, tail, "test", "a test re-anchor", [1])
        audit.append(
            session, organization_id=org, action=audit.REANCHOR_ACTION, resource_type="test", data=data
        )
    good = _report(engine, org)
    with transaction(engine) as session:
        stale = audit.reanchor_data("b" * 64, tail, "test", "points at an older head", [1])
        bad = audit.append(
            session, organization_id=org, action=audit.REANCHOR_ACTION, resource_type="test", data=stale
        )

    # Execute
    report = _report(engine, org)

    # Assert
    assert good.ok and good.reanchors == 1
    assert not report.ok and report.first_bad_id == bad.id
    assert report.reason == "re-anchor's new_head is not the head it follows"
