"""TOTP second factor: sealed at rest, one use per time step, nothing after erasure (SQLite and
PostgreSQL). Codes are computed with the ``cryptography`` TOTP from the secret shown at enrolment,
as an authenticator app would."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from sqlalchemy import Engine, select

from orchestrator.keys import LocalFileKek
from schema import directory, mfa, personal_data
from schema.db import transaction
from schema.errors import ConflictError, NotFoundError
from schema.models import ImmutableAuditLog, UserMfa
from schema.personal_data import PersonalDataVault

NOW = 1_900_000_000.0  # a fixed moment: step 63_333_333


def _code(secret: str, at: float) -> str:
    return TOTP(base64.b32decode(secret), 6, SHA1(), 30).generate(at).decode()


def _enrolled(engine: Engine, tmp_path: Path) -> tuple[PersonalDataVault, uuid.UUID, mfa.Enrolment]:
    vault = PersonalDataVault(LocalFileKek(tmp_path / "kek.json"))
    with transaction(engine) as session:
        org = directory.create_organization(session, f"MFA {uuid.uuid4().hex[:6]}")
        user = directory.create_user(session, org.id, "ana@mfa.example", vault)
        enrolment = mfa.enroll(session, vault, user.id)
    return vault, user.id, enrolment


def _verify(engine: Engine, vault: PersonalDataVault, user: uuid.UUID, code: str, at: float = NOW) -> bool:
    with transaction(engine) as session:
        return mfa.verify(session, vault, user, code, now=at)


def test_enrolment_stores_the_secret_only_sealed_and_audits_it(engine: Engine, tmp_path: Path) -> None:
    # Prepare / Execute
    _, user, enrolment = _enrolled(engine, tmp_path)

    # Assert: the URI carries the secret for the app; the row only a sealed token; audited.
    assert (
        enrolment.uri.startswith("otpauth://totp/") and f"secret={enrolment.secret_base32}" in enrolment.uri
    )
    with transaction(engine) as session:
        row = session.get(UserMfa, user)
        assert row is not None and personal_data.is_sealed(row.secret_sealed)
        assert enrolment.secret_base32 not in row.secret_sealed and row.last_step is None
        actions = session.scalars(select(ImmutableAuditLog.action)).all()
        dumped = str(session.scalars(select(ImmutableAuditLog.action_data)).all())
    assert "security.mfa_enrolled" in actions and enrolment.secret_base32 not in dumped


def test_a_code_passes_once_per_time_step_and_never_an_older_one(engine: Engine, tmp_path: Path) -> None:
    # Prepare
    vault, user, enrolment = _enrolled(engine, tmp_path)
    now_code = _code(enrolment.secret_base32, NOW)
    earlier_code = _code(enrolment.secret_base32, NOW - 30)

    # Execute
    first = _verify(engine, vault, user, now_code)
    replayed = _verify(engine, vault, user, now_code)
    older_after = _verify(engine, vault, user, earlier_code)
    next_step = _verify(engine, vault, user, _code(enrolment.secret_base32, NOW + 30), at=NOW + 30)

    # Assert
    assert (first, replayed, older_after, next_step) == (True, False, False, True)


def test_drift_of_one_step_passes_but_not_two_and_wrong_codes_fail(engine: Engine, tmp_path: Path) -> None:
    # Prepare
    vault, user, enrolment = _enrolled(engine, tmp_path)
    right = _code(enrolment.secret_base32, NOW)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"

    # Execute / Assert
    assert _verify(engine, vault, user, wrong) is False
    assert _verify(engine, vault, user, "12345") is False and _verify(engine, vault, user, "abcdef") is False
    assert _verify(engine, vault, user, _code(enrolment.secret_base32, NOW - 60)) is False
    assert _verify(engine, vault, user, _code(enrolment.secret_base32, NOW - 30)) is True


def test_replace_and_remove_and_erasure(engine: Engine, tmp_path: Path) -> None:
    # Prepare
    vault, user, enrolment = _enrolled(engine, tmp_path)

    # Execute / Assert: a second enrolment needs --replace; the old secret stops working.
    with transaction(engine) as session, pytest.raises(ConflictError):
        mfa.enroll(session, vault, user)
    with transaction(engine) as session:
        renewed = mfa.enroll(session, vault, user, replace=True)
    assert renewed.secret_base32 != enrolment.secret_base32
    assert _verify(engine, vault, user, _code(enrolment.secret_base32, NOW)) is False
    assert _verify(engine, vault, user, _code(renewed.secret_base32, NOW)) is True

    # Erasure shreds the user's key: the factor can no longer be opened, so it never passes.
    with transaction(engine) as session:
        vault.shred(session, user)
    assert _verify(engine, vault, user, _code(renewed.secret_base32, NOW + 30), at=NOW + 30) is False

    with transaction(engine) as session:
        mfa.remove(session, user)
    with transaction(engine) as session, pytest.raises(NotFoundError):
        mfa.remove(session, user)
    assert _verify(engine, vault, user, _code(renewed.secret_base32, NOW + 60), at=NOW + 60) is False
