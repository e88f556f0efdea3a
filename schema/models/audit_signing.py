"""Signatures of the audit log's re-anchor records (issue 19; migration 0012).

- ``audit_signing_keys``: the service's Ed25519 keys that sign re-anchors; the public half in the
  clear (anyone verifies), the private half only wrapped by the key-encryption key, the AAD binding
  the key id and the public half.
- ``audit_reanchor_signatures``: one signature per ``audit.reanchored`` record, kept beside the chain
  rather than in it: a record is hashed when written, and a migration that re-anchors may run where
  the KEK is not reachable, so the signature is added later without touching the chain.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at
from schema.types import TimestampTZ, UUIDType


class AuditSigningKey(Base):
    """An Ed25519 key of the service; ``kid`` is the first 32 hex digits of SHA-256(public key)."""

    __tablename__ = "audit_signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    """The raw 32-byte public key, base64."""
    private_wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    kek_version: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime | None] = created_at()


class AuditReanchorSignature(Base):
    """The signature of one re-anchor record, over its chain, id, hash and the heads it names."""

    __tablename__ = "audit_reanchor_signatures"

    record_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("immutable_audit_log.id"),
        primary_key=True,
        autoincrement=False,
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    kid: Mapped[str] = mapped_column(String(64), ForeignKey("audit_signing_keys.kid"))
    algorithm: Mapped[str] = mapped_column(String(20))
    signature: Mapped[str] = mapped_column(Text)
    """Base64 of the 64-byte Ed25519 signature."""
    signed_at: Mapped[datetime | None] = mapped_column(TimestampTZ)


class AuditChainAnchor(Base):
    """A chain's head (record id, hash, length) at one moment, signed with the audit signing key.

    Fills the role of the spec's ``blockchain_tx_id`` without a blockchain: once a head is anchored
    (and the anchors exported somewhere else), rewriting the chain before it, even consistently
    re-hashed, no longer matches the anchor (``schema.audit_anchors``; migration 0016).
    """

    __tablename__ = "audit_chain_anchors"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    record_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    """The head's id; no foreign key, so an anchor outlives a deleted record and says so."""
    record_hash: Mapped[str] = mapped_column(String(128))
    records: Mapped[int] = mapped_column(Integer)
    anchored_at: Mapped[datetime] = mapped_column(TimestampTZ)
    kid: Mapped[str] = mapped_column(String(64), ForeignKey("audit_signing_keys.kid"))
    algorithm: Mapped[str] = mapped_column(String(20))
    signature: Mapped[str] = mapped_column(Text)
