"""Personal data that must stay in an append-only record: sealed per user, shredded on erasure.

Append-only records (the hash-chained audit log above all) carry ids, never an email, a name or
free text somebody typed. Where such a value must stay provable or readable, it is written as

- a *sealed* token ``pd1:<base64(nonce | AES-256-GCM ciphertext+tag)>`` under the user's own data
  key, the AAD binding user id and purpose (a token copied to another user or field does not open);
- a *fingerprint* ``HMAC-SHA256`` of the value under a subkey of the same user key, so a claimed
  value can be checked against the record while the user exists.

The user's key lives in ``personal_data_keys`` only wrapped by the key-encryption key (the KEK
provider of ``orchestrator.keys``, passed in: this module never builds a KEK of its own). Erasure
destroys the wrapped key: every sealed value of the user becomes unreadable and every fingerprint
unlinkable, while the records and their hashes stay, so the audit chain still verifies. Reading a
shredded value returns :data:`ERASED`, never an error.

The fingerprint is keyed per user rather than with one server-wide key on purpose: a server-wide
HMAC of an email stays linkable to that address for ever (whoever holds the key can test a guess),
which is pseudonymous personal data; a per-user key shredded at erasure leaves nothing to test.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import uuid
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from schema.models import PersonalDataKey
from schema.timeutil import iso, utcnow

ERASED = "[erased]"
UNREADABLE = "[unreadable]"
SEALED_PREFIX = "pd1:"
NONCE_BYTES = 12


class KeyWrapper(Protocol):
    """What this module needs of a KEK provider (``orchestrator.keys.KekProvider`` satisfies it)."""

    uri: str

    def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, version: str, blob: bytes, aad: bytes) -> bytes: ...


def key_aad(user_id: uuid.UUID) -> bytes:
    return f"accute:personal-data-key:{user_id}".encode()


def value_aad(user_id: uuid.UUID, purpose: str) -> bytes:
    return f"accute:personal-data:{user_id}:{purpose}".encode()


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


class PersonalDataVault:
    """Per-user data keys under one KEK; unwrapped keys are cached for this object's life only."""

    def __init__(self, kek: KeyWrapper) -> None:
        self.kek = kek
        self._keys: dict[uuid.UUID, bytes] = {}

    # -- keys --------------------------------------------------------------------------------------
    def _row(self, session: Session, user_id: uuid.UUID) -> PersonalDataKey | None:
        return session.get(PersonalDataKey, user_id)

    def _create(self, session: Session, organization_id: uuid.UUID, user_id: uuid.UUID) -> PersonalDataKey:
        key = os.urandom(32)  # an AES-256 key (what AESGCM.generate_key returns)
        kek_version, wrapped = self.kek.wrap(key, key_aad(user_id))
        row = PersonalDataKey(
            user_id=user_id, organization_id=organization_id, wrapped_key=wrapped, kek_version=kek_version
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:  # a concurrent writer created the user's key first
            existing = self._row(session, user_id)
            if existing is None:
                raise
            return existing
        self._keys[user_id] = key
        return row

    def _key(self, session: Session, user_id: uuid.UUID) -> bytes | None:
        """The user's key, or None when it never existed or was shredded.

        The row is read every time (another process may have shredded it); only the unwrapping,
        which may be a round trip to an HSM, is cached.
        """
        row = self._row(session, user_id)
        if row is None or row.wrapped_key is None or row.kek_version is None:
            self._keys.pop(user_id, None)
            return None
        cached = self._keys.get(user_id)
        if cached is None:
            cached = self.kek.unwrap(row.kek_version, row.wrapped_key, key_aad(user_id))
            self._keys[user_id] = cached
        return cached

    def _live_key(self, session: Session, organization_id: uuid.UUID, user_id: uuid.UUID) -> bytes | None:
        """The user's key, created on first use; None once shredded (nothing more may be recorded)."""
        row = self._row(session, user_id)
        if row is None:
            row = self._create(session, organization_id, user_id)
        return None if row.wrapped_key is None else self._key(session, user_id)

    # -- values ------------------------------------------------------------------------------------
    def seal(
        self, session: Session, organization_id: uuid.UUID, user_id: uuid.UUID, purpose: str, value: str
    ) -> str:
        """``value`` encrypted under the user's key (created on first use), as a ``pd1:`` token.

        For an erased user nothing is recorded: the result is :data:`ERASED`.
        """
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only when sealing (CLI start-up)

        key = self._live_key(session, organization_id, user_id)
        if key is None:
            return ERASED
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + AESGCM(key).encrypt(nonce, value.encode(), value_aad(user_id, purpose))
        return SEALED_PREFIX + base64.b64encode(sealed).decode()

    def open(self, session: Session, user_id: uuid.UUID, purpose: str, token: str) -> str:
        """The plaintext of a token; :data:`ERASED` once the user's key is shredded."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self._key(session, user_id)
        if key is None:
            return ERASED
        try:
            blob = base64.b64decode(token[len(SEALED_PREFIX) :], validate=True)
            return (
                AESGCM(key)
                .decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], value_aad(user_id, purpose))
                .decode()
            )
        except (InvalidTag, ValueError, binascii.Error):
            return UNREADABLE  # a token of another user or field, or a tampered one

    def fingerprint(
        self, session: Session, organization_id: uuid.UUID, user_id: uuid.UUID, purpose: str, value: str
    ) -> str:
        """A keyed hash of ``value`` that proves it later, while the user's key lives."""
        key = self._live_key(session, organization_id, user_id)
        if key is None:
            return ERASED
        return _fingerprint(key, user_id, purpose, value)

    def matches(
        self, session: Session, user_id: uuid.UUID, purpose: str, value: str, recorded: str
    ) -> bool | None:
        """Whether ``value`` is the one fingerprinted in ``recorded``; None once the key is shredded."""
        key = self._key(session, user_id)
        if key is None:
            return None
        return hmac.compare_digest(_fingerprint(key, user_id, purpose, value), recorded)

    def open_data(self, session: Session, user_id: uuid.UUID | None, data: dict[str, Any]) -> dict[str, Any]:
        """An audit record's data with every sealed ``<purpose>_sealed`` field opened (or marked)."""
        if user_id is None:
            return dict(data)
        opened: dict[str, Any] = {}
        for name, value in data.items():
            if name.endswith("_sealed") and is_sealed(value):
                purpose = name[: -len("_sealed")]
                opened[purpose] = self.open(session, user_id, purpose, value)
            else:
                opened[name] = value
        return opened

    def rewrap_all(self, session: Session) -> int:
        """Re-wrap every live user key under the KEK's current version (after a KEK rotation)."""
        rows = session.scalars(select(PersonalDataKey).where(PersonalDataKey.wrapped_key.is_not(None))).all()
        for row in rows:
            key = self._key(session, row.user_id)
            assert key is not None
            row.kek_version, row.wrapped_key = self.kek.wrap(key, key_aad(row.user_id))
        session.flush()
        return len(rows)

    # -- erasure -----------------------------------------------------------------------------------
    def shred(self, session: Session, user_id: uuid.UUID) -> bool:
        """Destroy the user's key; True when there was a live key to destroy."""
        self._keys.pop(user_id, None)
        return shred(session, user_id)


def _fingerprint(key: bytes, user_id: uuid.UUID, purpose: str, value: str) -> str:
    subkey = hmac.new(key, b"accute:personal-data:fingerprint", hashlib.sha256).digest()
    message = f"{user_id}:{purpose}:{value}".encode()
    return "hmac-sha256:" + hmac.new(subkey, message, hashlib.sha256).hexdigest()


def shred(session: Session, user_id: uuid.UUID) -> bool:
    """Destroy a user's wrapped key (no KEK needed); True when there was one to destroy."""
    row = session.get(PersonalDataKey, user_id, with_for_update=True)
    if row is None or row.wrapped_key is None:
        return False
    row.wrapped_key, row.kek_version, row.shredded_at = None, None, utcnow()
    session.flush()
    return True


def key_state(session: Session, user_id: uuid.UUID) -> dict[str, Any]:
    """What ``personal_data_keys`` holds for the user (never the key): none, active or shredded."""
    row = session.scalar(select(PersonalDataKey).where(PersonalDataKey.user_id == user_id))
    if row is None:
        return {"state": "none"}
    if row.wrapped_key is None:
        return {"state": "shredded", "shredded_at": iso(row.shredded_at)}
    return {"state": "active", "kek_version": row.kek_version, "created_at": iso(row.created_at)}
