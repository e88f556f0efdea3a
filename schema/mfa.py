"""TOTP second factor (RFC 6238) of a user: enrol, remove, and check one code once.

The algorithm is the ``cryptography`` library's (``hazmat.primitives.twofactor.totp.TOTP``: SHA-1,
6 digits, 30-second steps, what authenticator apps expect); this module only stores the secret
and enforces one use per time step.

- The secret (20 random bytes) is stored in ``user_mfa`` only sealed under the user's personal
  data key (``schema.personal_data``, purpose ``totp_secret``); it is shown once, at enrolment,
  as an ``otpauth://`` URI and base32 text, and never logged or returned again.
- ``verify`` accepts a code of the current step or one step either side (clock drift), and only
  for a step later than the last accepted one: the check-and-set is one conditional UPDATE, so a
  code replayed on another worker, even at the same moment, is refused there too.
"""

from __future__ import annotations

import base64
import hmac
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from schema import audit
from schema.errors import ConflictError, NotFoundError
from schema.models import User, UserMfa
from schema.personal_data import ERASED, UNREADABLE, PersonalDataVault

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.twofactor.totp import TOTP

PURPOSE = "totp_secret"
STEP_S = 30
DIGITS = 6
SECRET_BYTES = 20
DRIFT_STEPS = 1
ISSUER = "Accute FL"


@dataclass(frozen=True)
class Enrolment:
    """What the user needs once to set up an authenticator app."""

    user_id: uuid.UUID
    secret_base32: str
    uri: str


def _totp(secret: bytes) -> TOTP:
    from cryptography.hazmat.primitives.hashes import SHA1
    from cryptography.hazmat.primitives.twofactor.totp import TOTP

    return TOTP(secret, DIGITS, SHA1(), STEP_S, enforce_key_length=True)


def enroll(
    session: Session, vault: PersonalDataVault, user_id: uuid.UUID, replace: bool = False
) -> Enrolment:
    """A new secret for ``user_id``, stored sealed; ``ConflictError`` if enrolled unless ``replace``."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id}; list them with `accute-fl user list --org ORG`")
    row = session.get(UserMfa, user_id)
    if row is not None and not replace:
        raise ConflictError(f"user {user_id} already has a TOTP factor; pass --replace to issue a new one")
    secret = os.urandom(SECRET_BYTES)
    text = base64.b32encode(secret).decode()
    sealed = vault.seal(session, user.organization_id, user_id, PURPOSE, text)
    if sealed == ERASED:
        raise ConflictError(f"user {user_id} was erased; nothing can be enrolled for them")
    if row is None:
        session.add(UserMfa(user_id=user_id, organization_id=user.organization_id, secret_sealed=sealed))
    else:
        row.secret_sealed, row.last_step = sealed, None
    audit.append(
        session,
        organization_id=user.organization_id,
        action="security.mfa_enrolled",
        resource_type="user",
        resource_id=user_id,
        user_id=user_id,
        data={"method": "totp", "replaced": row is not None},
    )
    session.flush()
    uri = _totp(secret).get_provisioning_uri(str(user_id), ISSUER)
    return Enrolment(user_id, text, uri)


def remove(session: Session, user_id: uuid.UUID) -> None:
    """Drop the user's factor (audited); ``NotFoundError`` if there is none."""
    row = session.get(UserMfa, user_id)
    if row is None:
        raise NotFoundError(f"user {user_id} has no TOTP factor")
    organization = row.organization_id
    session.delete(row)
    audit.append(
        session,
        organization_id=organization,
        action="security.mfa_removed",
        resource_type="user",
        resource_id=user_id,
        user_id=user_id,
        data={"method": "totp"},
    )
    session.flush()


def is_enrolled(session: Session, user_id: uuid.UUID) -> bool:
    return session.get(UserMfa, user_id) is not None


def verify(
    session: Session, vault: PersonalDataVault, user_id: uuid.UUID, code: str, now: float | None = None
) -> bool:
    """Whether ``code`` is the user's TOTP for a step not used before; marks that step used.

    False for a user without a factor, an erased user, a malformed, wrong or replayed code.
    """
    if len(code) != DIGITS or not code.isdigit():
        return False
    row = session.get(UserMfa, user_id)
    if row is None:
        return False
    text = vault.open(session, user_id, PURPOSE, row.secret_sealed)
    if text in (ERASED, UNREADABLE):
        return False
    totp = _totp(base64.b32decode(text))
    step = int((time.time() if now is None else now) // STEP_S)
    matched: int | None = None
    for candidate in range(step - DRIFT_STEPS, step + DRIFT_STEPS + 1):
        expected = totp.generate(candidate * STEP_S)
        if hmac.compare_digest(expected, code.encode()):
            matched = candidate
    if matched is None or (row.last_step is not None and matched <= row.last_step):
        return False
    used = session.execute(
        update(UserMfa)
        .where(UserMfa.user_id == user_id, or_(UserMfa.last_step.is_(None), UserMfa.last_step < matched))
        .values(last_step=matched)
        .execution_options(synchronize_session=False)
    )
    return bool(used.rowcount == 1)  # type: ignore[attr-defined]
