"""Per-user sealing: tokens bound to user and purpose, shredding turns reads into the marker."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import Engine

from orchestrator.keys import LocalFileKek
from schema import directory, personal_data
from schema.db import transaction
from schema.models import PersonalDataKey
from schema.personal_data import ERASED, UNREADABLE, PersonalDataVault


def _users(engine: Engine, vault: PersonalDataVault) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    with transaction(engine) as session:
        org = directory.create_organization(session, "Vault Co")
        a = directory.create_user(session, org.id, "a@vault.example.com", vault)
        b = directory.create_user(session, org.id, "b@vault.example.com", vault)
        return org.id, a.id, b.id


def test_sealed_value_opens_only_for_its_user_and_purpose(engine: Engine, tmp_path: Path) -> None:
    # Prepare
    vault = PersonalDataVault(LocalFileKek(tmp_path / "kek.json"))
    org, a, b = _users(engine, vault)

    # Execute
    with transaction(engine) as session:
        token = vault.seal(session, org, a, "note", "call me after 5")
        fresh = PersonalDataVault(LocalFileKek(tmp_path / "kek.json"))  # unwraps from the table
        opened = fresh.open(session, a, "note", token)
        as_other_user = fresh.open(session, b, "note", token)
        as_other_field = fresh.open(session, a, "email", token)
        row = session.get(PersonalDataKey, a)

    # Assert
    assert token.startswith(personal_data.SEALED_PREFIX) and "call me" not in token
    assert opened == "call me after 5"
    assert as_other_user == UNREADABLE and as_other_field == UNREADABLE
    assert row is not None and row.wrapped_key is not None and len(row.wrapped_key) == 12 + 32 + 16


def test_shredding_turns_reads_into_the_marker_and_records_nothing_new(
    engine: Engine, tmp_path: Path
) -> None:
    # Prepare: the vault has the key cached, as a long-lived service would.
    vault = PersonalDataVault(LocalFileKek(tmp_path / "kek.json"))
    org, a, b = _users(engine, vault)
    with transaction(engine) as session:
        token = vault.seal(session, org, a, "note", "private")
        fingerprint = vault.fingerprint(session, org, a, "note", "private")
        assert vault.matches(session, a, "note", "private", fingerprint) is True
        assert vault.matches(session, a, "note", "other", fingerprint) is False

    # Execute: another process shreds (no KEK needed).
    with transaction(engine) as session:
        first = personal_data.shred(session, a)
        second = personal_data.shred(session, a)

    # Assert
    with transaction(engine) as session:
        assert vault.open(session, a, "note", token) == ERASED
        assert vault.matches(session, a, "note", "private", fingerprint) is None
        assert vault.seal(session, org, a, "note", "new") == ERASED
        assert personal_data.key_state(session, a)["state"] == "shredded"
        assert personal_data.key_state(session, b)["state"] == "active"
    assert (first, second) == (True, False)


def test_rewrap_after_kek_rotation_keeps_values_readable_without_the_old_kek(
    engine: Engine, tmp_path: Path
) -> None:
    # Prepare
    kek = LocalFileKek(tmp_path / "kek.json")
    vault = PersonalDataVault(kek)
    org, a, b = _users(engine, vault)
    with transaction(engine) as session:
        token = vault.seal(session, org, a, "note", "still mine")
        personal_data.shred(session, b)
    new_version = kek.rotate()

    # Execute
    with transaction(engine) as session:
        rewrapped = vault.rewrap_all(session)
    kek.path.write_text(kek.path.read_text().replace('"1": ', '"retired": '))  # the old version is gone

    # Assert
    with transaction(engine) as session:
        row = session.get(PersonalDataKey, a)
        opened = PersonalDataVault(LocalFileKek(kek.path)).open(session, a, "note", token)
    assert rewrapped == 1  # the shredded key stays shredded
    assert row is not None and row.kek_version == new_version
    assert opened == "still mine"
