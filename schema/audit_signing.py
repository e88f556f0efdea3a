"""Re-anchor records signed by the service (Ed25519), so a rewritten chain is provably ours.

A migration that rewrites old audit payloads re-hashes the chain and appends an
``audit.reanchored`` record (``schema.audit``). Its HMAC binding is keyed with the old head, which
anyone who read the chain knows: it shows which old head a re-anchor claims, not who made it. The
signature here does: an Ed25519 key whose private half exists only wrapped by the key-encryption
key signs the record's chain, id, hash and the heads it names. Whoever can write the database but
not use the KEK cannot forge one; the public key is stored in the clear, so anyone verifies.

The signature lives beside the chain (``audit_reanchor_signatures``), never in it: a migration may
run where the KEK is not reachable, so a re-anchor may be signed later (``sign_pending``) without
touching a hashed record. An unsigned re-anchor is reported, a signature that does not verify
breaks the chain's verification. With the KEK at hand, ``authenticate_keys`` also checks that each
stored public key is the one its wrapped private half derives (a key row planted by someone without
the KEK fails there); without it, compare a key's id with the one ``sign_pending`` printed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from schema import audit
from schema.audit import REANCHOR_ACTION, UNSIGNED
from schema.errors import AccuteError
from schema.models import AuditReanchorSignature, AuditSigningKey, ImmutableAuditLog
from schema.personal_data import KeyWrapper
from schema.timeutil import utcnow

ALGORITHM = "ed25519"


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:32]


def _key_aad(kid: str, public: bytes) -> bytes:
    return f"accute:audit-signing:{kid}:{base64.b64encode(public).decode()}".encode()


def reanchor_message(
    organization_id: uuid.UUID | str, record_id: int, record_hash: str, data: dict[str, Any]
) -> bytes:
    """What is signed: the chain, the record and its hash (which covers every field of it), and
    the heads, migration and rewritten ids spelled out so a reader sees what the key vouched for."""
    document = {
        "purpose": "accute:audit-reanchor",
        "organization_id": str(organization_id),
        "record_id": int(record_id),
        "record_hash": record_hash,
        "old_head": data.get("old_head"),
        "new_head": data.get("new_head"),
        "migration": data.get("migration"),
        "rewritten": data.get("rewritten"),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


class ReanchorSigner:
    """Signs re-anchor records with the service's newest audit signing key (created on first use)."""

    def __init__(self, kek: KeyWrapper) -> None:
        self.kek = kek
        self._private: Ed25519PrivateKey | None = None
        self._kid = ""

    def _key(self, session: Session) -> tuple[str, Ed25519PrivateKey]:
        if self._private is not None:
            return self._kid, self._private
        row = session.scalars(
            select(AuditSigningKey).order_by(AuditSigningKey.created_at.desc(), AuditSigningKey.kid).limit(1)
        ).first()
        if row is None:
            private = Ed25519PrivateKey.generate()
            public = _raw_public(private.public_key())
            kid = key_id(public)
            seed = private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            kek_version, wrapped = self.kek.wrap(seed, _key_aad(kid, public))
            session.add(
                AuditSigningKey(
                    kid=kid,
                    public_key=base64.b64encode(public).decode(),
                    private_wrapped=wrapped,
                    kek_version=kek_version,
                    created_at=utcnow(),
                )
            )
            session.flush()
        else:
            kid, public = row.kid, base64.b64decode(row.public_key)
            seed = self.kek.unwrap(row.kek_version, row.private_wrapped, _key_aad(kid, public))
            private = Ed25519PrivateKey.from_private_bytes(seed)
        self._kid, self._private = kid, private
        return kid, private

    def sign_message(self, session: Session, message: bytes) -> tuple[str, str]:
        """(key id, base64 signature) of ``message`` (the chain anchors of ``schema.audit_anchors``)."""
        kid, private = self._key(session)
        return kid, base64.b64encode(private.sign(message)).decode()

    def sign(self, session: Session, record: Any) -> AuditReanchorSignature:
        kid, private = self._key(session)
        message = reanchor_message(record.organization_id, record.id, record.record_hash, record.action_data)
        signature = AuditReanchorSignature(
            record_id=record.id,
            organization_id=record.organization_id,
            kid=kid,
            algorithm=ALGORITHM,
            signature=base64.b64encode(private.sign(message)).decode(),
            signed_at=utcnow(),
        )
        session.add(signature)
        session.flush()
        return signature


def pending(session: Session) -> list[ImmutableAuditLog]:
    """Re-anchor records that have no signature yet, in chain order."""
    signed = select(AuditReanchorSignature.record_id)
    query = select(ImmutableAuditLog).where(
        ImmutableAuditLog.action == REANCHOR_ACTION, ImmutableAuditLog.id.not_in(signed)
    )
    return list(session.scalars(query.order_by(ImmutableAuditLog.id)))


def sign_pending(session: Session, kek: KeyWrapper) -> list[dict[str, Any]]:
    """Sign every unsigned re-anchor record with the service key; returns what was signed.

    Only a re-anchor whose chain verifies up to it is signed: signing vouches for the transition,
    and a chain broken before the re-anchor (or a binding that does not check) is refused rather
    than blessed. The caller commits.
    """
    from schema.audit import verify

    records = pending(session)
    if not records:
        return []
    broken = {r.organization_id: r for r in verify(session, signatures=SignatureBook()) if not r.ok}
    signer = ReanchorSigner(kek)
    signed = []
    for record in records:
        report = broken.get(str(record.organization_id))
        if report is not None and report.first_bad_id is not None and report.first_bad_id <= record.id:
            continue
        signature = signer.sign(session, record)
        signed.append(
            {
                "record_id": record.id,
                "organization_id": str(record.organization_id),
                "migration": record.action_data.get("migration"),
                "kid": signature.kid,
            }
        )
    return signed


@dataclass
class SignatureBook:
    """The stored signatures and public keys, checked against re-anchor records one by one.

    ``distrusted`` holds key ids that failed :func:`authenticate_keys`: their signatures count as
    forged. An empty book (the default) treats every re-anchor as unsigned.
    """

    signatures: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict)
    distrusted: set[str] = field(default_factory=set)

    def problem(self, record: Any) -> str | None:
        """None when signed and verified, :data:`UNSIGNED`, or the reason it does not verify."""
        stored = self.signatures.get(int(record.id))
        if stored is None:
            return UNSIGNED
        kid, algorithm, signature = stored
        public = self.keys.get(kid)
        if algorithm != ALGORITHM or public is None:
            return "re-anchor is signed with an unknown key or algorithm"
        if kid in self.distrusted:
            return "re-anchor is signed with a key the KEK does not vouch for"
        message = reanchor_message(record.organization_id, record.id, record.record_hash, record.action_data)
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(signature), message)
        except (InvalidSignature, ValueError, binascii.Error):
            return "re-anchor's signature does not verify"
        return None


def load(session: Session, organization_id: uuid.UUID | None = None) -> SignatureBook:
    query = select(
        AuditReanchorSignature.record_id,
        AuditReanchorSignature.kid,
        AuditReanchorSignature.algorithm,
        AuditReanchorSignature.signature,
    )
    if organization_id is not None:
        query = query.where(AuditReanchorSignature.organization_id == organization_id)
    signatures = {int(r): (k, a, s) for r, k, a, s in session.execute(query)}
    keys = {
        kid: _decode_public(public)
        for kid, public in session.execute(select(AuditSigningKey.kid, AuditSigningKey.public_key))
    }
    return SignatureBook(signatures, keys)


def _decode_public(public: str) -> bytes:
    try:
        return base64.b64decode(public, validate=True)
    except (ValueError, binascii.Error):
        return b""


def authenticate_keys(session: Session, kek: KeyWrapper) -> list[str]:
    """Ids of stored signing keys whose wrapped private half does not open under the KEK to the
    stored public key (a planted key); an empty list when every key is the service's own."""
    bad = []
    for row in session.scalars(select(AuditSigningKey)):
        public = _decode_public(row.public_key)
        try:
            seed = kek.unwrap(row.kek_version, row.private_wrapped, _key_aad(row.kid, public))
            derived = _raw_public(Ed25519PrivateKey.from_private_bytes(seed).public_key())
        except (AccuteError, ValueError):  # the provider's refusal (wrong KEK, tampered blob)
            derived = b""
        if derived != public or key_id(public) != row.kid:
            bad.append(row.kid)
    return bad


def public_keys(session: Session) -> list[dict[str, Any]]:
    """The signing keys anyone may verify with (never the private half)."""
    rows: Iterable[AuditSigningKey] = session.scalars(select(AuditSigningKey).order_by(AuditSigningKey.kid))
    return [{"kid": r.kid, "algorithm": ALGORITHM, "public_key": r.public_key} for r in rows]


def rewrap_keys(session: Session, kek: KeyWrapper) -> int:
    """Re-wrap every audit signing key under the KEK's current version (``KeyRing.rotate_kek``
    calls it beside the other re-wraps)."""
    rows = session.scalars(select(AuditSigningKey)).all()
    for row in rows:
        public = _decode_public(row.public_key)
        seed = kek.unwrap(row.kek_version, row.private_wrapped, _key_aad(row.kid, public))
        row.kek_version, row.private_wrapped = kek.wrap(seed, _key_aad(row.kid, public))
    session.flush()
    return len(rows)


def verify_chains(
    session: Session, organization_id: uuid.UUID | None = None, kek: KeyWrapper | None = None
) -> list[audit.ChainReport]:
    """``accute-fl audit verify``: every chain (or one organization's) re-hashed, re-anchors checked
    against their signatures, and, where the KEK is reachable (``kek``), the signing keys checked
    against it (a key that does not open under the KEK is distrusted: its signatures count as forged)."""
    return audit.verify(session, organization_id, signatures=signature_book(session, organization_id, kek))


def signature_book(
    session: Session, organization_id: uuid.UUID | None = None, kek: KeyWrapper | None = None
) -> SignatureBook:
    """The stored signatures, with the keys the KEK does not vouch for (when reachable) distrusted."""
    book = load(session, organization_id)
    if kek is not None:
        book.distrusted = set(authenticate_keys(session, kek))
    return book
