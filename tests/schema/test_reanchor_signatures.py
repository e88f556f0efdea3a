"""Re-anchor records signed by the service key: unsigned is reported, forged or tampered fails."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from orchestrator.keys import KeyRing, LocalFileKek
from schema import audit, audit_guard, audit_signing, migrate
from schema.db import transaction
from schema.models import AuditReanchorSignature, AuditSigningKey, ImmutableAuditLog
from tests.schema.test_erasure_migration import _old_rule_users


def _reanchored(engine: Engine) -> uuid.UUID:
    """A database migrated from 0005 with old-rule users: one organization's chain re-anchored."""
    migrate.upgrade(engine, "0005")
    org, _, _ = _old_rule_users(engine)
    migrate.upgrade(engine)
    return org


def _chain(session: Session, org: uuid.UUID) -> list[ImmutableAuditLog]:
    query = select(ImmutableAuditLog).where(ImmutableAuditLog.organization_id == org)
    return list(session.scalars(query.order_by(ImmutableAuditLog.id)))


def test_a_migrated_reanchor_is_unsigned_until_signed_then_verifies(
    empty_engine: Engine, tmp_path: Path
) -> None:
    # Prepare
    engine = empty_engine
    org = _reanchored(engine)
    with transaction(engine) as session:
        (before,) = audit.verify(session, org)
        anchor_id = _chain(session, org)[-1].id

    # Execute
    with transaction(engine) as session:
        signed = audit_signing.sign_pending(session, LocalFileKek(tmp_path / "kek.json"))
    with transaction(engine) as session:
        (after,) = audit.verify(session, org)
        keys = audit_signing.public_keys(session)
        left = audit_signing.pending(session)

    # Assert: reported (not failed) before, signed and verified after, the public key readable.
    assert before.ok and before.unsigned_reanchors == [anchor_id]
    assert [s["record_id"] for s in signed] == [anchor_id] and signed[0]["migration"] == "0007"
    assert after.ok and after.reanchors == 1 and after.unsigned_reanchors == []
    assert left == []
    assert [k["kid"] for k in keys] == [signed[0]["kid"]]
    assert len(base64.b64decode(keys[0]["public_key"])) == 32


def _tamper_rewritten_record(session: Session, org: uuid.UUID) -> int:
    """What a writer without the KEK can do: change a rewritten record, re-hash the chain after it,
    and fix the re-anchor's new head and HMAC binding so that every hash check still passes (on
    PostgreSQL as the table's owner, past the append-only trigger: the owner can always)."""
    audit_guard.maintenance(session)
    chain = _chain(session, org)
    anchor = chain[-1]
    first = next(r for r in chain if r.action == "user.created")
    first.action_data = {"email": "planted@forger.example.com"}
    data = dict(anchor.action_data)
    new_head = audit.rechain(chain[:-1], chain.index(first))
    anchor.action_data = audit.reanchor_data(
        data["old_head"], new_head, data["migration"], data["reason"], data["rewritten"]
    )
    audit.rechain(chain, len(chain) - 1)
    return anchor.id


def test_a_tampered_reanchor_with_a_consistent_chain_fails_on_its_signature(
    empty_engine: Engine, tmp_path: Path
) -> None:
    # Prepare: a signed re-anchor, then a new head forged behind it.
    engine = empty_engine
    org = _reanchored(engine)
    with transaction(engine) as session:
        audit_signing.sign_pending(session, LocalFileKek(tmp_path / "kek.json"))
    with transaction(engine) as session:
        anchor_id = _tamper_rewritten_record(session, org)

    # Execute
    with transaction(engine) as session:
        (unsigned_view,) = audit.verify(session, org, signatures=audit_signing.SignatureBook())
        (report,) = audit.verify(session, org)

    # Assert: the hashes and the HMAC alone accept the forgery; the signature does not.
    assert unsigned_view.ok and unsigned_view.unsigned_reanchors == [anchor_id]
    assert not report.ok and report.first_bad_id == anchor_id
    assert report.reason == "re-anchor's signature does not verify"


def test_a_signature_by_a_planted_key_fails_where_the_kek_is_at_hand(
    empty_engine: Engine, tmp_path: Path
) -> None:
    # Prepare: a forger adds a key of their own (public half in the clear, junk for the wrapped
    # private half) and signs the re-anchor with it.
    engine = empty_engine
    org = _reanchored(engine)
    kek = LocalFileKek(tmp_path / "kek.json")
    forger = Ed25519PrivateKey.generate()
    public = forger.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = audit_signing.key_id(public)
    with transaction(engine) as session:
        anchor = _chain(session, org)[-1]
        message = audit_signing.reanchor_message(org, anchor.id, anchor.record_hash, anchor.action_data)
        session.add(
            AuditSigningKey(
                kid=kid,
                public_key=base64.b64encode(public).decode(),
                private_wrapped=b"\0" * 60,
                kek_version="1",
            )
        )
        session.flush()
        session.add(
            AuditReanchorSignature(
                record_id=anchor.id,
                organization_id=org,
                kid=kid,
                algorithm="ed25519",
                signature=base64.b64encode(forger.sign(message)).decode(),
            )
        )

    # Execute
    with transaction(engine) as session:
        (without_kek,) = audit.verify(session, org)
        book = audit_signing.load(session, org)
        book.distrusted = set(audit_signing.authenticate_keys(session, kek))
        (with_kek,) = audit.verify(session, org, signatures=book)

    # Assert: the signature is mathematically valid; only the KEK shows the key is not ours.
    assert without_kek.ok and without_kek.unsigned_reanchors == []
    assert book.distrusted == {kid}
    assert not with_kek.ok and with_kek.reason == "re-anchor is signed with a key the KEK does not vouch for"


def test_a_reanchor_in_a_chain_broken_before_it_is_not_signed(empty_engine: Engine, tmp_path: Path) -> None:
    # Prepare: a record before the re-anchor edited without re-hashing.
    engine = empty_engine
    org = _reanchored(engine)
    with transaction(engine) as session:
        audit_guard.maintenance(session)  # the owner, past PostgreSQL's append-only trigger
        chain = _chain(session, org)
        chain[0].action_data = {**chain[0].action_data, "edited": True}

    # Execute
    with transaction(engine) as session:
        signed = audit_signing.sign_pending(session, LocalFileKek(tmp_path / "kek.json"))
    with transaction(engine) as session:
        left = [r.id for r in audit_signing.pending(session)]
        keys = session.scalars(select(AuditSigningKey)).all()

    # Assert
    assert signed == [] and left == [chain[-1].id]
    assert keys == []


def test_rewrapped_signing_keys_still_sign_and_verify_after_a_kek_rotation(
    empty_engine: Engine, tmp_path: Path
) -> None:
    # Prepare: a signed re-anchor, then the KEK rotated.
    engine = empty_engine
    org = _reanchored(engine)
    kek = LocalFileKek(tmp_path / "kek.json")
    with transaction(engine) as session:
        (first,) = audit_signing.sign_pending(session, kek)
        before = session.scalars(select(AuditSigningKey)).one().kek_version
    new_version = kek.rotate()

    # Execute
    with transaction(engine) as session:
        rewrapped = audit_signing.rewrap_keys(session, kek)
    with transaction(engine) as session:
        key = session.scalars(select(AuditSigningKey)).one()
        distrusted = audit_signing.authenticate_keys(session, kek)
        book = audit_signing.load(session, org)
        (report,) = audit.verify(session, org, signatures=book)

    # Assert
    assert rewrapped == 1 and before != new_version and key.kek_version == new_version
    assert key.kid == first["kid"] and distrusted == []
    assert report.ok and report.unsigned_reanchors == []


def test_a_kek_rotation_of_the_key_ring_rewraps_the_audit_signing_keys(
    empty_engine: Engine, tmp_path: Path
) -> None:
    # Prepare: a signed re-anchor under KEK version 1.
    engine = empty_engine
    org = _reanchored(engine)
    path = tmp_path / "kek.json"
    kek = LocalFileKek(path)
    with transaction(engine) as session:
        audit_signing.sign_pending(session, kek)

    # Execute: the operator's rotation, then the old KEK version removed.
    with transaction(engine) as session:
        new_version = KeyRing(kek).rotate_kek(session)
    document = json.loads(path.read_text())
    document["keys"] = {v: k for v, k in document["keys"].items() if v == new_version}
    path.write_text(json.dumps(document))

    # Assert: the key is under the new version and still opens (signing keys trusted, chain verifies).
    fresh = LocalFileKek(path)
    with transaction(engine) as session:
        key = session.scalars(select(AuditSigningKey)).one()
        distrusted = audit_signing.authenticate_keys(session, fresh)
        (report,) = audit.verify(session, org, signatures=audit_signing.load(session, org))
    assert key.kek_version == new_version and distrusted == []
    assert report.ok
