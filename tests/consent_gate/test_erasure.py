"""Erasure reaches every store: no byte of the person left in the database, the audit chain verifies.

The database is searched as bytes: the whole SQLite file (and any journal or WAL beside it) after
the erasure's compaction, and a ``pg_dump`` of the test's PostgreSQL schema.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, select

from consent_gate import dsr, erasure, lineage, records, take_snapshot
from orchestrator.keys import LocalFileKek
from schema import audit, directory, migrate
from schema.db import make_engine, transaction
from schema.models import (
    AgentSession,
    BehavioralBiometrics,
    HubOutbox,
    ImmutableAuditLog,
    LlmUsageLog,
    PersonalDataKey,
    TrustedDevice,
    User,
    UserSession,
    ZeroTrustAccessLog,
)
from schema.personal_data import ERASED, PersonalDataVault

EMAIL = "zelda.quarterly@erase-me.example.com"
OTHER_EMAIL = "otto.kept@erase-me.example.com"
FREE_TEXT = "Please forget me, Zelda Quarterly of 12 Birchwood Lane"
REASON = "moving my books to Birchwood Ledger Co"
USER_AGENT = "ZeldaBrowser/7.3 (Birchwood)"
OTHER_AGENT = "OttoBrowser/1.0"
DEVICE = "device-fp-zelda-7f3a9c"
SECRETS = (EMAIL, FREE_TEXT, REASON, USER_AGENT, DEVICE)
FL_CONSENTS = ("ai_training", "federated_learning", "vamn_contribution")


@dataclass
class World:
    org: uuid.UUID
    user: uuid.UUID
    other: uuid.UUID
    vault: PersonalDataVault


def _platform_rows(session: sa.orm.Session, org: uuid.UUID, user: uuid.UUID) -> None:
    """A login session with biometrics, a trusted device seen by the access log, agent usage."""
    login = UserSession(user_id=user)
    device = TrustedDevice(user_id=user, device_fingerprint=DEVICE)
    agent = AgentSession(organization_id=org, user_id=user, agent_slug="tax-advisor")
    session.add_all([login, device, agent])
    session.flush()
    session.add(BehavioralBiometrics(user_id=user, session_id=login.id, device_fingerprint=DEVICE))
    session.add(
        ZeroTrustAccessLog(
            organization_id=org,
            user_id=user,
            device_id=device.id,
            resource_requested="/ledger",
            access_decision="allow",
            trust_score=Decimal("80"),
            factors_evaluated={"device": "trusted"},
        )
    )
    session.add(
        LlmUsageLog(
            organization_id=org,
            user_id=user,
            session_id=agent.id,
            provider="openai",
            model_id="gpt-test",
            input_tokens=10,
            output_tokens=5,
            latency_ms=12,
            status="success",
        )
    )


def _world(engine: Engine, tmp_path: Path) -> World:
    vault = PersonalDataVault(LocalFileKek(tmp_path / "kek.json"))
    with transaction(engine) as session:
        org = directory.create_organization(session, "Erasure Co")
        user = directory.create_user(session, org.id, EMAIL, vault)
        other = directory.create_user(session, org.id, OTHER_EMAIL, vault)
        for who, agent in ((user, USER_AGENT), (other, OTHER_AGENT)):
            for consent_type in FL_CONSENTS:
                records.grant(
                    session, org.id, who.id, consent_type, ip_address="203.0.113.9", user_agent=agent
                )
        records.withdraw(session, org.id, user.id, "ai_training", reason=REASON, vault=vault)
        records.grant(session, org.id, user.id, "ai_training", reason=REASON, vault=vault)
        _platform_rows(session, org.id, user.id)
        access = dsr.file_request(session, org.id, user.id, "access", {"message": FREE_TEXT})
    with transaction(engine) as session:
        dsr.process_request(session, access.id)  # the export (with the email) stays in the request
    with transaction(engine) as session:
        snapshot = take_snapshot(session, org.id, "digits")
        lineage.record_snapshot_use(session, snapshot.digest, 1, run_id="run-e")
    with transaction(engine) as session:
        lineage.link_model_version(session, "run-e", "vamn-quantitative", "1.0.0")
    return World(org.id, user.id, other.id, vault)


def _erase(engine: Engine, world: World) -> dict[str, object]:
    with transaction(engine) as session:
        request = dsr.file_request(session, world.org, world.user, "erasure", {"why": FREE_TEXT})
    with transaction(engine) as session:
        done = dsr.process_request(session, request.id)
        response = dict(done.response_details or {})
    erasure.compact(engine, wait_s=60)
    return response


def _database_bytes(engine: Engine, tmp_path: Path) -> bytes:
    """Every byte the database holds: the SQLite file and its side files, or a pg_dump followed
    by the raw files of every table, index and TOAST table of the schema (dead row versions too)."""
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database or "")
        sides = [path.with_name(path.name + s) for s in ("-wal", "-journal", "-shm")]
        return b"".join(p.read_bytes() for p in [path, *sides] if p.exists())
    return _pg_dump(engine, tmp_path) + _pg_relation_files(engine)


def _schema_of(engine: Engine) -> str:
    return str(engine.url.query.get("options", "")).removeprefix("-csearch_path=")


def _pg_dump(engine: Engine, tmp_path: Path) -> bytes:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.fail("pg_dump is needed to search a PostgreSQL dump; install postgresql-client")
    url = engine.url.set(drivername="postgresql", query={})
    target = tmp_path / "dump.sql"
    subprocess.run(
        [
            pg_dump,
            "--no-owner",
            "-n",
            _schema_of(engine),
            "-f",
            str(target),
            url.render_as_string(hide_password=False),
        ],
        check=True,
        timeout=120,
    )
    dumped = target.read_bytes()
    assert b"CREATE TABLE" in dumped and b"immutable_audit_log" in dumped  # a real dump of our schema
    return dumped


_RELATIONS = sa.text(
    "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'i') "
    "UNION SELECT t.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_class t ON t.oid = c.reltoastrelid WHERE n.nspname = :schema"
)


def _pg_relation_files(engine: Engine) -> bytes:
    """The files under the server's data directory, read through the server (``CHECKPOINT`` first,
    so the files hold what the buffers hold): dead tuples no dump shows are searched too."""
    with engine.connect() as connection:
        allowed = connection.scalar(
            sa.text(
                "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_server_files', 'MEMBER') "
                "FROM pg_roles WHERE rolname = current_user"
            )
        )
        if not allowed:
            pytest.skip(
                "reading PostgreSQL's table files needs a superuser or pg_read_server_files "
                "(pg_read_binary_file); the test role has neither"
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("CHECKPOINT")
        relations = connection.scalars(_RELATIONS, {"schema": _schema_of(engine)}).all()
        read = sa.text("SELECT pg_read_binary_file(pg_relation_filepath(CAST(:r AS regclass)))")
        files = [bytes(connection.scalar(read, {"r": r}) or b"") for r in relations]
    assert len(files) > 20 and any(files)  # every table of the schema, not an empty list
    return b"".join(files)


def _erase_uncompacted(engine: Engine, world: World) -> None:
    """An erasure as ``dsr process`` commits it, before the compaction that follows it."""
    with transaction(engine) as session:
        request = dsr.file_request(session, world.org, world.user, "erasure")
    with transaction(engine) as session:
        dsr.process_request(session, request.id)


def test_access_request_lists_every_store_that_holds_the_user(engine: Engine, tmp_path: Path) -> None:
    # Prepare
    world = _world(engine, tmp_path)
    with transaction(engine) as session:
        request = dsr.file_request(session, world.org, world.user, "access")

    # Execute
    with transaction(engine) as session:
        export = (dsr.process_request(session, request.id).response_details or {})["export"]

    # Assert: every store but the security anomalies holds something, and says what.
    listed = {entry["store"]: entry for entry in export["stores"]}
    assert list(listed) == [store.name for store in erasure.STORES]
    holding = {name for name, entry in listed.items() if erasure._holds_something(entry)}
    assert holding == {store.name for store in erasure.STORES} - {"security_anomalies"}
    assert listed["trustedDevices"]["rows"] == 1 and listed["llm_usage_log"]["rows"] == 1
    assert listed["immutable_audit_log"]["sealed_values"] == 3  # the email and two reasons
    assert listed["personal_data_keys"]["state"] == "active"
    assert all(isinstance(entry["holds"], str) and entry["holds"] for entry in export["stores"])
    # The hub events naming the user: 5 consent changes, the world's access request filed and
    # completed, this one filed.
    assert listed["hub_outbox"]["rows"] == 8 and listed["security_anomalies"]["rows"] == 0


def test_after_erasure_no_personal_byte_is_left_and_the_chain_verifies(
    engine: Engine, tmp_path: Path
) -> None:
    # Prepare: the person's data sits in every store; before erasure the bytes are there to find.
    world = _world(engine, tmp_path)
    before = _database_bytes(engine, tmp_path)
    assert all(secret.encode() in before for secret in SECRETS)
    with transaction(engine) as session:
        key_row = session.get(PersonalDataKey, world.user)
        assert key_row is not None and key_row.wrapped_key is not None
        wrapped_key = bytes(key_row.wrapped_key)  # with the KEK, this opens every sealed value

    # Execute
    response = _erase(engine, world)

    # Assert: nowhere in the database ...
    after = _database_bytes(engine, tmp_path)
    for secret in SECRETS:
        assert secret.encode() not in after, f"{secret!r} survived the erasure"
    assert OTHER_EMAIL.encode() in after  # the search would have found an address
    assert wrapped_key in before and wrapped_key not in after  # the shredded key left the files too
    # ... every store reported ...
    stores = response["erased"]["stores"]  # type: ignore[index]
    assert list(stores) == [store.name for store in erasure.STORES]
    assert stores["personal_data_keys"]["action"] == "shredded"
    assert stores["sessions"]["rows"] == 1 and stores["behavioral_biometrics"]["rows"] == 1
    assert stores["trustedDevices"]["access_log_rows_unlinked"] == 1
    assert stores["llm_usage_log"]["rows"] == 1 and stores["agentSessions"]["rows"] == 1
    with transaction(engine) as session:
        person = session.get(User, world.user)
        assert person is not None
        assert erasure.holders(session, person) == [
            "user_consents",
            "consent_events",
            "data_subject_requests",
            "consent_snapshot_members",
            "zero_trust_access_log",
            "immutable_audit_log",
            "hub_outbox",
            "users",
        ]  # what is left: withdrawn consents, history facts, requests, lineage, security ids, events
        # naming the user by id, the row
        for model in (UserSession, TrustedDevice, BehavioralBiometrics):
            assert session.scalar(select(sa.func.count()).select_from(model)) == 0
        # ... the chain still verifies and sealed values read as the marker, never an error ...
        assert all(report.ok for report in audit.verify(session))
        created = {
            r.resource_id: r
            for r in session.scalars(
                select(ImmutableAuditLog).where(ImmutableAuditLog.action == "user.created")
            )
        }
        erased = world.vault.open_data(session, world.user, created[world.user].action_data)
        kept = world.vault.open_data(session, world.other, created[world.other].action_data)
        assert erased["email"] == ERASED and kept["email"] == OTHER_EMAIL
        fingerprint = created[world.user].action_data["email_fingerprint"]
        assert world.vault.matches(session, world.user, "email", EMAIL, fingerprint) is None
        other_fingerprint = created[world.other].action_data["email_fingerprint"]
        assert world.vault.matches(session, world.other, "email", OTHER_EMAIL, other_fingerprint) is True


@pytest.fixture(params=["wal", "delete"])
def sqlite_engine(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """SQLite as most builds ship it: secure_delete off (Debian's is compiled with it on); in
    each journal mode ``ACCUTE_SQLITE_JOURNAL_MODE`` offers (WAL, the default, and the rollback
    journal)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'free-pages.db'}", sqlite_journal_mode=request.param)
    sa.event.listen(engine, "connect", lambda connection, _: connection.execute("PRAGMA secure_delete=OFF"))
    migrate.upgrade(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == request.param
    yield engine
    engine.dispose()


def test_sqlite_keeps_erased_bytes_in_free_pages_until_compaction(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """Why erasure VACUUMs: without secure_delete an UPDATE or DELETE leaves the old row image in
    the page or on free pages."""
    engine = sqlite_engine
    _erase_uncompacted(engine, _world(engine, tmp_path))
    uncompacted = _database_bytes(engine, tmp_path)

    result = erasure.compact(engine, wait_s=60)

    assert EMAIL.encode() in uncompacted
    assert result["status"] == "vacuumed"
    assert EMAIL.encode() not in _database_bytes(engine, tmp_path)


def test_postgres_keeps_erased_bytes_in_dead_tuples_until_compaction(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """Why erasure runs VACUUM FULL on PostgreSQL: no dump shows a dead row version, but the table
    file keeps it (and plain VACUUM frees its space without zeroing it)."""
    # Prepare
    engine = pg_engine
    _erase_uncompacted(engine, _world(engine, tmp_path))
    dumped = _pg_dump(engine, tmp_path)
    uncompacted = _pg_relation_files(engine)

    # Execute
    result = erasure.compact(engine, wait_s=60)

    # Assert
    assert EMAIL.encode() not in dumped and EMAIL.encode() in uncompacted
    assert result["status"] == "vacuumed"
    assert {"users", "user_consents", "personal_data_keys", "trustedDevices"} <= set(result["tables"])
    compacted = _pg_relation_files(engine)
    assert not any(secret.encode() in compacted for secret in SECRETS)
    assert OTHER_EMAIL.encode() in compacted


def test_gate_and_lineage_behave_as_before_for_the_other_users(engine: Engine, tmp_path: Path) -> None:
    # Prepare
    world = _world(engine, tmp_path)

    # Execute
    _erase(engine, world)
    with transaction(engine) as session:
        snapshot = take_snapshot(session, world.org, "digits")
        lineage.record_snapshot_use(session, snapshot.digest, 2, run_id="run-f")
    with transaction(engine) as session:
        linked = lineage.link_model_version(session, "run-f", "vamn-quantitative", "1.1.0")

    # Assert: the other user trains on, the erased one is out, both lineages read by id.
    assert snapshot.user_ids == (world.other,)
    assert linked == 1
    with transaction(engine) as session:
        erased_versions = lineage.model_versions(lineage.user_lineage(session, world.org, world.user))
        other_versions = lineage.model_versions(lineage.user_lineage(session, world.org, world.other))
        consents = records.current_consents(session, world.org, world.other)
    assert erased_versions == [{"model_name": "vamn-quantitative", "model_version": "1.0.0"}]
    assert {"model_name": "vamn-quantitative", "model_version": "1.1.0"} in other_versions
    assert {c.consent_type for c in consents if c.consent_given} == set(FL_CONSENTS)
    assert all(c.user_agent == OTHER_AGENT for c in consents)


def test_hub_events_name_the_erased_user_by_id_only(engine: Engine, tmp_path: Path) -> None:
    """The outbox keeps the consent and request events of an erased user: ids, never the email or text."""
    # Prepare
    world = _world(engine, tmp_path)

    # Execute
    response = _erase(engine, world)

    # Assert
    with transaction(engine) as session:
        rows = session.execute(select(HubOutbox.event_type, HubOutbox.payload)).all()
    mine = [(kind, payload) for kind, payload in rows if payload.get("user_id") == str(world.user)]
    kinds = [kind for kind, _ in mine]
    assert kinds.count("accute.dsr.filed") == 2 and kinds.count("accute.dsr.completed") == 2
    assert "accute.consent.withdrawn" in kinds  # the erasure withdrew every consent
    dumped = json.dumps([payload for _, payload in rows])
    assert all(secret not in dumped for secret in (*SECRETS, OTHER_EMAIL, "erase-me"))
    stores = response["erased"]["stores"]  # type: ignore[index]
    assert stores["hub_outbox"]["rows"] == len(mine) - 1  # its own completion is appended after
    assert stores["hub_outbox"]["action"].startswith("kept")


def test_registered_store_is_listed_and_erased(engine: Engine, tmp_path: Path) -> None:
    """The hook the hub outbox will use: a registered store replaces the placeholder, an access
    request lists what it holds and an erasure walks it."""
    # Prepare
    world = _world(engine, tmp_path)
    seen: list[uuid.UUID] = []
    outbox = erasure.Store(
        "hub_outbox",
        "events for the hub",
        lambda session, user: {"rows": 2, "seen_user": str(user.id)},
        lambda session, ctx: seen.append(ctx.user.id) or {"action": "tombstoned", "rows": 2},
    )
    extra = erasure.Store("usage_exports", "a new store", lambda s, u: {"rows": 1}, lambda s, c: {"rows": 1})
    original = list(erasure.STORES)
    erasure.register_store(outbox)
    erasure.register_store(extra)
    try:
        # Execute
        with transaction(engine) as session:
            access = dsr.file_request(session, world.org, world.user, "access")
        with transaction(engine) as session:
            export = (dsr.process_request(session, access.id).response_details or {})["export"]
        response = _erase(engine, world)
    finally:
        erasure.STORES[:] = original

    # Assert
    listed = {entry["store"]: entry for entry in export["stores"]}
    assert listed["hub_outbox"] == {
        "store": "hub_outbox",
        "holds": "events for the hub",
        "rows": 2,
        "seen_user": str(world.user),
    }
    assert [entry["store"] for entry in export["stores"]][-3:] == [
        "usage_exports",
        "personal_data_keys",
        "users",
    ]
    assert seen == [world.user]
    stores = response["erased"]["stores"]  # type: ignore[index]
    assert stores["hub_outbox"] == {"action": "tombstoned", "rows": 2}
    assert stores["usage_exports"] == {"rows": 1}
    assert list(stores)[-2:] == ["personal_data_keys", "users"]
