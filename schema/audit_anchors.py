"""Signed anchors of the audit chains' heads: the spec's ``blockchain_tx_id`` without a blockchain.

``anchor`` signs each chain's current head (organization, record id, record hash, length, time)
with the service's audit signing key (Ed25519, private half wrapped by the KEK; the key of
``schema.audit_signing``) and stores it in ``audit_chain_anchors``; ``export`` gives the anchors as
JSON to keep somewhere the database's writers cannot reach (another system, a printout, a public
timestamping service). The hash chain alone shows an edit that was not re-hashed; an anchor also
shows a chain rewritten *consistently* up to a later head: the anchored record no longer has the
anchored hash, or is gone. ``check`` reports such anchors and anchors whose signature does not
verify. Run ``accute-fl audit anchor`` periodically (cron); an anchor taken before a tampering is
what catches it.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schema import audit
from schema.audit import ChainReport
from schema.audit_signing import ALGORITHM, ReanchorSigner, SignatureBook, signature_book
from schema.models import AuditChainAnchor, ImmutableAuditLog
from schema.personal_data import KeyWrapper
from schema.timeutil import iso, utcnow


def anchor_message(
    organization_id: uuid.UUID | str, record_id: int, record_hash: str, records: int, anchored_at: datetime
) -> bytes:
    """What an anchor's signature covers."""
    document = {
        "purpose": "accute:audit-anchor",
        "organization_id": str(organization_id),
        "record_id": int(record_id),
        "record_hash": record_hash,
        "records": int(records),
        "anchored_at": iso(anchored_at),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _heads(session: Session, organization_id: uuid.UUID | None) -> list[tuple[uuid.UUID, int, str, int]]:
    """(organization, head id, head hash, records) of each chain."""
    per_chain = select(
        ImmutableAuditLog.organization_id.label("org"),
        func.max(ImmutableAuditLog.id).label("head"),
        func.count().label("records"),
    ).group_by(ImmutableAuditLog.organization_id)
    if organization_id is not None:
        per_chain = per_chain.where(ImmutableAuditLog.organization_id == organization_id)
    chains = per_chain.subquery()
    query = (
        select(chains.c.org, chains.c.head, ImmutableAuditLog.record_hash, chains.c.records)
        .join(ImmutableAuditLog, ImmutableAuditLog.id == chains.c.head)
        .order_by(chains.c.org)
    )
    return [
        (org, int(head), record_hash, int(records))
        for org, head, record_hash, records in session.execute(query)
    ]


def anchor(
    session: Session, kek: KeyWrapper, organization_id: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    """Sign and store the head of every chain (or one organization's); the caller commits.

    Verify the chains first (``accute-fl audit anchor`` does): an anchor vouches for what it signs.
    """
    signer = ReanchorSigner(kek)
    anchored_at = utcnow()
    rows = []
    for org, head, record_hash, records in _heads(session, organization_id):
        kid, signature = signer.sign_message(
            session, anchor_message(org, head, record_hash, records, anchored_at)
        )
        row = AuditChainAnchor(
            organization_id=org,
            record_id=head,
            record_hash=record_hash,
            records=records,
            anchored_at=anchored_at,
            kid=kid,
            algorithm=ALGORITHM,
            signature=signature,
        )
        session.add(row)
        rows.append(row)
    session.flush()
    return [as_dict(r) for r in rows]


def as_dict(row: AuditChainAnchor) -> dict[str, Any]:
    return {
        "id": row.id,
        "organization_id": str(row.organization_id),
        "record_id": row.record_id,
        "record_hash": row.record_hash,
        "records": row.records,
        "anchored_at": iso(row.anchored_at),
        "kid": row.kid,
        "algorithm": row.algorithm,
        "signature": row.signature,
    }


def export(session: Session, organization_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Every stored anchor, oldest first (the public keys are ``accute-fl audit keys``)."""
    query = select(AuditChainAnchor).order_by(AuditChainAnchor.id)
    if organization_id is not None:
        query = query.where(AuditChainAnchor.organization_id == organization_id)
    return [as_dict(r) for r in session.scalars(query)]


@dataclass(frozen=True)
class AnchorProblem:
    anchor_id: int
    organization_id: str
    record_id: int
    reason: str


def check(
    session: Session, book: SignatureBook, organization_id: uuid.UUID | None = None
) -> list[AnchorProblem]:
    """Anchors the database no longer agrees with: a signature that does not verify (or by a key
    the KEK does not vouch for), an anchored record that is gone, moved to another chain or whose
    hash changed. Empty when every anchor holds."""
    problems = []
    for item in export(session, organization_id):
        reason = _signature_problem(item, book)
        if reason is None:
            record = session.execute(
                select(ImmutableAuditLog.organization_id, ImmutableAuditLog.record_hash).where(
                    ImmutableAuditLog.id == item["record_id"]
                )
            ).first()
            if record is None:
                reason = "the anchored record is gone"
            elif str(record[0]) != item["organization_id"]:
                reason = "the anchored record now belongs to another chain"
            elif record[1] != item["record_hash"]:
                reason = "the anchored record's hash changed since it was anchored"
        if reason is not None:
            problems.append(AnchorProblem(item["id"], item["organization_id"], item["record_id"], reason))
    return problems


def _signature_problem(item: dict[str, Any], book: SignatureBook) -> str | None:
    public = book.keys.get(item["kid"])
    if item["algorithm"] != ALGORITHM or public is None:
        return "anchor is signed with an unknown key or algorithm"
    if item["kid"] in book.distrusted:
        return "anchor is signed with a key the KEK does not vouch for"
    message = anchor_message(
        item["organization_id"],
        item["record_id"],
        item["record_hash"],
        item["records"],
        datetime.fromisoformat(item["anchored_at"]),
    )
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(item["signature"]), message)
    except (InvalidSignature, ValueError, binascii.Error):
        return "anchor's signature does not verify"
    return None


def verify_all(
    session: Session, organization_id: uuid.UUID | None = None, kek: KeyWrapper | None = None
) -> tuple[list[ChainReport], list[AnchorProblem]]:
    """``accute-fl audit verify`` (and its HTTP route): every chain re-hashed with its re-anchor
    signatures checked, and every stored anchor checked against the chain."""
    book = signature_book(session, organization_id, kek)
    return audit.verify(session, organization_id, signatures=book), check(session, book, organization_id)
