"""`db upgrade` signs re-anchors where the KEK is, `audit verify` reports unsigned and forged ones."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from orchestrator.keys import LocalFileKek
from schema.db import make_engine, transaction
from tests.cli.conftest import Runner
from tests.schema.test_erasure_migration import _old_rule_users
from tests.schema.test_reanchor_signatures import _tamper_rewritten_record


def _old_database(cli: Runner, database_url: str) -> str:
    """A database at 0005 holding emails in its audit log (what 0007 rewrites and re-anchors)."""
    assert cli("db", "upgrade", "--revision", "0005").code == 0
    engine = make_engine(database_url)
    try:
        org, _, _ = _old_rule_users(engine)
    finally:
        engine.dispose()
    return str(org)


def test_upgrade_without_the_kek_leaves_the_reanchor_unsigned_until_signed(
    cli: Runner, database_url: str
) -> None:
    # Prepare: no KEK file on this host.
    org = _old_database(cli, database_url)
    assert not Path(os.environ["ACCUTE_KEK_FILE"]).exists()

    # Execute
    upgraded = cli("db", "upgrade")
    unsigned = cli("audit", "verify", "--org", org, "--json")
    strict = cli("audit", "verify", "--require-signed")
    refused = cli("audit", "sign-reanchors")
    stray_kek = Path(os.environ["ACCUTE_KEK_FILE"]).exists()
    LocalFileKek(Path(os.environ["ACCUTE_KEK_FILE"])).current_version()  # the KEK arrives
    signed = cli("audit", "sign-reanchors", "--json")
    verified = cli("audit", "verify", "--org", org, "--require-signed", "--json")
    keys = cli("audit", "keys", "--json")

    # Assert
    assert upgraded.code == 0 and "1 audit re-anchor record(s) left unsigned" in upgraded.err
    assert not stray_kek  # neither upgrade nor verify created a KEK nobody else holds
    (report,) = unsigned.json()
    assert unsigned.code == 0 and report["ok"] and len(report["unsigned_reanchors"]) == 1
    assert "carry no service signature" in unsigned.err
    assert strict.code == 4 and "audit sign-reanchors" in strict.err
    assert refused.code == 2 and "KEK is not reachable" in refused.err
    assert signed.code == 0, signed.err
    assert [s["record_id"] for s in signed.json()] == report["unsigned_reanchors"]
    (after,) = verified.json()
    assert verified.code == 0 and after["unsigned_reanchors"] == [] and after["reanchors"] == 1
    assert [k["kid"] for k in keys.json()] == [signed.json()[0]["kid"]]


def test_upgrade_with_the_kek_signs_and_a_tampered_reanchor_fails_verify(
    cli: Runner, database_url: str
) -> None:
    # Prepare: the KEK is on this host when the database is upgraded.
    org = _old_database(cli, database_url)
    LocalFileKek(Path(os.environ["ACCUTE_KEK_FILE"])).current_version()
    upgraded = cli("db", "upgrade")
    clean = cli("audit", "verify", "--require-signed", "--json")
    engine = make_engine(database_url)
    try:
        with transaction(engine) as session:
            anchor_id = _tamper_rewritten_record(session, uuid.UUID(org))
    finally:
        engine.dispose()

    # Execute
    tampered = cli("audit", "verify", "--json")

    # Assert
    assert upgraded.code == 0 and "signed 1 audit re-anchor record(s)" in upgraded.err
    assert clean.code == 0 and all(r["ok"] and not r["unsigned_reanchors"] for r in clean.json())
    assert tampered.code == 4
    assert f"broken at record {anchor_id}: re-anchor's signature does not verify" in tampered.err
