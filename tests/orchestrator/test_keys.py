"""Envelope encryption: AES-256-GCM under per-organization data keys wrapped by a KEK (local, PKCS#11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.keys import KeyRing, KeyUnusableError, LocalFileKek, Pkcs11Kek
from schema import directory
from schema.db import transaction
from schema.models import HsmKeyRegistry, ImmutableAuditLog, OrganizationDataKey
from tests.conftest import IN_CI

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def _org(engine: Engine) -> uuid.UUID:
    with transaction(engine) as session:
        return directory.create_organization(session, f"firm-{uuid.uuid4().hex[:6]}").id


def test_kek_file_is_created_private_on_first_use(tmp_path: Path) -> None:
    # Prepare
    kek = LocalFileKek(tmp_path / "state" / "kek.json")

    # Execute
    version, blob = kek.wrap(b"x" * 32, b"aad")

    # Assert
    assert version == "1"
    assert (tmp_path / "state" / "kek.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert kek.unwrap("1", blob, b"aad") == b"x" * 32


def test_secret_round_trips_and_is_bound_to_its_organization_and_config(
    engine: Engine, tmp_path: Path
) -> None:
    # Prepare
    ring = KeyRing(LocalFileKek(tmp_path / "kek.json"))
    org, other_org = _org(engine), _org(engine)
    config, other_config = uuid.uuid4(), uuid.uuid4()

    # Execute
    with transaction(engine) as session:
        blob = ring.encrypt_secret(session, org, config, "sk-live-secret")
        plain = ring.decrypt_secret(session, org, config, blob)
        ring.active_data_key(session, other_org)

    # Assert
    assert plain == "sk-live-secret" and b"sk-live-secret" not in blob
    with transaction(engine) as session:
        with pytest.raises(KeyUnusableError):
            ring.decrypt_secret(session, org, other_config, blob)
        with pytest.raises(KeyUnusableError):
            ring.decrypt_secret(session, other_org, config, blob)
        registry = session.scalars(select(HsmKeyRegistry).where(HsmKeyRegistry.organization_id == org)).one()
    assert (registry.key_purpose, registry.key_version, registry.algorithm) == (
        "organization_dek",
        "1",
        "AES-256-GCM",
    )


def test_kek_rotation_rewraps_every_data_key(engine: Engine, tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "kek.json"
    ring = KeyRing(LocalFileKek(path))
    org, config = _org(engine), uuid.uuid4()
    with transaction(engine) as session:
        blob = ring.encrypt_secret(session, org, config, "sk-rotate-me")

    # Execute
    with transaction(engine) as session:
        new_version = ring.rotate_kek(session)
    document = json.loads(path.read_text())
    del document["keys"]["1"]  # the old KEK is gone: only re-wrapped keys can still be opened
    path.write_text(json.dumps(document))
    fresh = KeyRing(LocalFileKek(path))

    # Assert
    with transaction(engine) as session:
        assert fresh.decrypt_secret(session, org, config, blob) == "sk-rotate-me"
        row = session.scalars(
            select(OrganizationDataKey).where(OrganizationDataKey.organization_id == org)
        ).one()
        master = session.scalars(
            select(HsmKeyRegistry).where(HsmKeyRegistry.key_purpose == "master_kek")
        ).one()
        audited = session.scalars(
            select(ImmutableAuditLog).where(ImmutableAuditLog.action == "keys.kek_rotated")
        ).one()
    assert new_version == "2" and row.kek_version == "2" and master.key_version == "2"
    assert audited.action_data["rewrapped_data_keys"] >= 1


def test_data_key_rotation_reencrypts_the_organizations_keys(engine: Engine, tmp_path: Path) -> None:
    # Prepare: a config row with an encrypted key, made through the ORM.
    from schema.models import TenantLlmConfig

    ring = KeyRing(LocalFileKek(tmp_path / "kek.json"))
    org = _org(engine)
    with transaction(engine) as session:
        row = TenantLlmConfig(
            id=uuid.uuid4(), organization_id=org, provider="openai", display_name="a", model_id="m"
        )
        row.api_key_encrypted = ring.encrypt_secret(session, org, row.id, "sk-dek-rotation")
        session.add(row)
        config_id, before = row.id, row.api_key_encrypted

    # Execute
    with transaction(engine) as session:
        version = ring.rotate_data_key(session, org)

    # Assert
    with transaction(engine) as session:
        after = session.get(TenantLlmConfig, config_id)
        assert after is not None and after.api_key_encrypted != before
        assert after.api_key_encrypted is not None and after.api_key_encrypted[2:6] == (2).to_bytes(4, "big")
        assert ring.decrypt_secret(session, org, config_id, after.api_key_encrypted) == "sk-dek-rotation"
        keys = session.scalars(
            select(OrganizationDataKey).where(OrganizationDataKey.organization_id == org)
        ).all()
        registry = session.scalars(select(HsmKeyRegistry).where(HsmKeyRegistry.organization_id == org)).one()
    assert version == 2 and sorted((k.version, k.is_active) for k in keys) == [(1, False), (2, True)]
    assert registry.key_version == "2"


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A SoftHSM token in a private folder: (token label, user PIN).

    One per test session: the PKCS#11 library reads its configuration once per process. Tests
    use their own key labels on it.
    """
    util = shutil.which("softhsm2-util")
    if util is None or not os.path.exists(SOFTHSM_MODULE):
        reason = "softhsm2 is not installed (apt-get install softhsm2; scripts/test.sh does it in CI)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("softhsm")
    tokens = folder / "tokens"
    tokens.mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [util, "--init-token", "--free", "--label", "accute-test", "--pin", "1234", "--so-pin", "5678"],
        check=True,
        capture_output=True,
    )
    return "accute-test", "1234"


def test_pkcs11_kek_wraps_unwraps_and_rotates_on_softhsm(softhsm: tuple[str, str], engine: Engine) -> None:
    # Prepare
    label, pin = softhsm
    key_label = f"kek-{uuid.uuid4().hex[:8]}"
    kek = Pkcs11Kek(SOFTHSM_MODULE, label, pin, key_label)
    ring = KeyRing(kek)
    org, config = _org(engine), uuid.uuid4()
    with transaction(engine) as session:
        blob = ring.encrypt_secret(session, org, config, "sk-in-hsm")

    # Execute
    with transaction(engine) as session:
        rotated = ring.rotate_kek(session)
    fresh = KeyRing(Pkcs11Kek(SOFTHSM_MODULE, label, pin, key_label))

    # Assert
    with transaction(engine) as session:
        assert fresh.decrypt_secret(session, org, config, blob) == "sk-in-hsm"
        row = session.scalars(
            select(OrganizationDataKey).where(OrganizationDataKey.organization_id == org)
        ).one()
    assert rotated == "2" and row.kek_version == "2"
    with pytest.raises(KeyUnusableError):
        kek.unwrap("2", row.wrapped_key, b"wrong aad")
