"""Tables of the inference cascade service beyond the spec's (migration 0004).

- ``organization_data_keys``: each organization's AES-256 data keys, wrapped by the key-encryption
  key (KEK); one active version per organization, older versions kept until nothing uses them.
- ``service_signing_keys``: the RS256 keys that sign the service's JWTs, private halves wrapped by
  the KEK; retired keys still verify the tokens they signed until those expire.
- ``llm_requests``: one row per answered chat request id, so a repeated request is answered from
  here and nothing is logged or billed twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint, text, true
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, uuid_pk
from schema.types import JSONBType, TimestampTZ, UUIDType


class OrganizationDataKey(Base):
    """One version of an organization's data key, as ciphertext under a KEK version."""

    __tablename__ = "organization_data_keys"
    __table_args__ = (UniqueConstraint("organization_id", "version"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    kek_version: Mapped[str] = mapped_column(String(100))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime | None] = created_at()
    rewrapped_at: Mapped[datetime | None] = mapped_column(TimestampTZ)


class ServiceSigningKey(Base):
    """An RS256 signing key of the service; ``kid`` goes into every token's header."""

    __tablename__ = "service_signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_pem: Mapped[str] = mapped_column(Text)
    private_wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    kek_version: Mapped[str] = mapped_column(String(100))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime | None] = created_at()
    retired_at: Mapped[datetime | None] = mapped_column(TimestampTZ)


class LlmRequest(Base):
    """The outcome of one chat request id of an organization (idempotency record)."""

    __tablename__ = "llm_requests"
    __table_args__ = (UniqueConstraint("organization_id", "caller", "request_id"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    caller: Mapped[str] = mapped_column(String(64), default="", server_default=text("''"))
    """SHA-256 (hex) of the token subject that sent the request: ids are scoped per caller."""
    request_id: Mapped[str] = mapped_column(String(100))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 (hex) of the request (agent, message, options): a reused id must ask the same."""
    agent_slug: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(50))
    response_json: Mapped[dict[str, Any] | None] = mapped_column(JSONBType)
    created_at: Mapped[datetime | None] = created_at()


class LlmInflight(Base):
    """A request id being answered right now (cross-process single flight, migration 0011).

    The process that inserts the row calls the providers; copies of the request in other worker
    processes see the row and wait for ``llm_requests`` instead of calling again. The row goes
    away in the transaction that stores the outcome; one older than the cascade deadline is stale
    (its process died) and may be taken over.
    """

    __tablename__ = "llm_inflight"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, ForeignKey("organizations.id"), primary_key=True
    )
    caller: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    claim_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    claimed_at: Mapped[datetime] = mapped_column(TimestampTZ)
