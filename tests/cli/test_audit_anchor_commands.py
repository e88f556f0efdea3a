"""`accute-fl audit verify | anchor | anchors`: a row changed behind the application's back fails
verify (exit 4) on both backends, and a signed anchor catches even a consistently re-hashed chain."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import select

from orchestrator.keys import LocalFileKek
from schema import audit, audit_guard
from schema.db import make_engine, transaction
from schema.models import AuditChainAnchor, ImmutableAuditLog
from tests.cli.conftest import Runner


def _org(cli: Runner, name: str) -> str:
    org: str = cli("org", "create", "--name", name, "--json").json()["id"]
    cli("user", "create", "--org", org, "--email", f"someone@{name}.example")
    return org


def _edit_raw(database_url: str, org: str) -> int:
    """Change the first record of the chain with plain SQL, as someone at the database would (on
    PostgreSQL as the table's owner, past the append-only trigger)."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            audit_guard.maintenance(connection)
            first = connection.execute(
                sa.text("SELECT min(id) FROM immutable_audit_log WHERE organization_id = :o"),
                {"o": uuid.UUID(org).hex if engine.dialect.name == "sqlite" else org},
            ).scalar_one()
            connection.execute(
                sa.text("UPDATE immutable_audit_log SET action = 'organization.renamed' WHERE id = :i"),
                {"i": first},
            )
    finally:
        engine.dispose()
    return int(first)


def _rewrite_consistently(database_url: str, org: str) -> None:
    """Change a record and re-hash everything after it: the chain alone verifies again."""
    engine = make_engine(database_url)
    try:
        with transaction(engine) as session:
            audit_guard.maintenance(session)
            chain = list(
                session.scalars(
                    select(ImmutableAuditLog)
                    .where(ImmutableAuditLog.organization_id == uuid.UUID(org))
                    .order_by(ImmutableAuditLog.id)
                )
            )
            chain[0].action_data = {**chain[0].action_data, "rewritten": True}
            audit.rechain(chain, 0)
    finally:
        engine.dispose()


def test_a_row_changed_with_raw_sql_fails_verify_with_exit_4(ready_cli: Runner, database_url: str) -> None:
    # Prepare
    org = _org(ready_cli, "rawedit")
    clean = ready_cli("audit", "verify", "--json")

    # Execute
    edited = _edit_raw(database_url, org)
    tampered = ready_cli("audit", "verify", "--json")

    # Assert
    assert clean.code == 0 and all(r["ok"] for r in clean.json())
    assert tampered.code == 4
    assert f"broken at record {edited}: record_hash does not match" in tampered.err


def test_an_anchor_catches_a_consistent_rewrite_and_exports_as_json(
    ready_cli: Runner, database_url: str, tmp_path: Path
) -> None:
    # Prepare: the KEK on this host, two chains, anchored.
    LocalFileKek(Path(os.environ["ACCUTE_KEK_FILE"])).current_version()
    org = _org(ready_cli, "anchored")
    _org(ready_cli, "bystander")
    anchored = ready_cli("audit", "anchor", "--json")
    verified = ready_cli("audit", "verify", "--json")
    export = tmp_path / "anchors.json"
    listed = ready_cli("audit", "anchors", "--export", str(export), "--json")

    # Execute: history rewritten and re-hashed; then the chain is appended to (new head).
    _rewrite_consistently(database_url, org)
    ready_cli("user", "create", "--org", org, "--email", "later@anchored.example")
    chain_only = ready_cli("audit", "verify", "--org", org, "--json")
    caught = ready_cli("audit", "verify", "--json")
    refused = ready_cli("audit", "anchor", "--json")

    # Assert: every chain anchored and verified; the export carries the anchors and the key.
    assert anchored.code == 0, anchored.err
    heads = {a["organization_id"]: a for a in anchored.json()}
    assert org in heads and len(heads) == 2  # one anchor per chain
    assert verified.code == 0
    document = json.loads(export.read_text())
    assert listed.code == 0 and document["anchors"] == listed.json()
    assert [k["kid"] for k in document["keys"]] == [heads[org]["kid"]]
    # The rewritten chain verifies as a chain, yet its anchor no longer holds: exit 4.
    assert [r["ok"] for r in chain_only.json()] == [True] and chain_only.code == 4
    assert caught.code == 4 and f"organization {org} no longer holds" in caught.err
    assert "hash changed since it was anchored" in caught.err
    assert refused.code == 0  # the chain itself verifies, so a new anchor is taken (of the new head)


def test_a_forged_anchor_fails_on_its_signature(ready_cli: Runner, database_url: str) -> None:
    # Prepare: an anchor, then its stored hash changed to match a rewritten chain.
    LocalFileKek(Path(os.environ["ACCUTE_KEK_FILE"])).current_version()
    org = _org(ready_cli, "forged")
    assert ready_cli("audit", "anchor", "--org", org).code == 0
    _rewrite_consistently(database_url, org)
    engine = make_engine(database_url)
    try:
        with transaction(engine) as session:
            row = session.scalars(select(AuditChainAnchor)).one()
            row.record_hash = session.scalar(
                select(ImmutableAuditLog.record_hash).where(ImmutableAuditLog.id == row.record_id)
            )
    finally:
        engine.dispose()

    # Execute
    result = ready_cli("audit", "verify", "--org", org)

    # Assert
    assert result.code == 4 and "anchor's signature does not verify" in result.err


def test_anchor_without_the_kek_is_a_configuration_error(ready_cli: Runner) -> None:
    result = ready_cli("audit", "anchor")
    assert result.code == 2 and "KEK is not reachable" in result.err
