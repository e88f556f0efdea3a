"""Per-user data keys for crypto-shredding (issue 19; migration 0007).

- ``personal_data_keys``: one AES-256 key per user, stored only wrapped by the key-encryption key
  (the same KEK provider as the organizations' data keys). Personal values that must stay in an
  append-only record (the audit log) are sealed under it; erasure sets ``wrapped_key`` to NULL and
  stamps ``shredded_at``, so those values become unreadable while the records and their hashes stay.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at
from schema.types import TimestampTZ, UUIDType


class PersonalDataKey(Base):
    """A user's data key as ciphertext under a KEK version; NULL once shredded by an erasure."""

    __tablename__ = "personal_data_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"), index=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    kek_version: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime | None] = created_at()
    shredded_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
