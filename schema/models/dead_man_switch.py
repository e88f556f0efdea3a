"""What a fired dead man's switch did to an organization, until a platform admin reverses it
(migration 0016).

One row per firing. While ``reversed_at`` is NULL its flags hold: federated admission skips an
organization whose training is paused, the cascade uses neither its provider configs nor the
platform fallback when those are disabled (``schema.restrictions`` reads them). The partial unique
index allows one unreversed firing per organization, so two watchers (or two workers) firing at
once cannot apply the actions twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, false, text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, uuid_pk
from schema.types import TimestampTZ, UUIDType


class DeadManSwitchFiring(Base):
    """The actions one firing applied, and its reversal."""

    __tablename__ = "dead_man_switch_firings"
    __table_args__ = (
        Index(
            "uq_dms_firing_unreversed",
            "organization_id",
            unique=True,
            postgresql_where=text("reversed_at IS NULL"),
            sqlite_where=text("reversed_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    config_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("dead_man_switch_config.id"))
    doom_timer_started_at: Mapped[datetime] = mapped_column(TimestampTZ)
    fired_at: Mapped[datetime] = mapped_column(TimestampTZ)
    training_paused: Mapped[bool] = mapped_column(Boolean, server_default=false())
    providers_disabled: Mapped[bool] = mapped_column(Boolean, server_default=false())
    fallback_disabled: Mapped[bool] = mapped_column(Boolean, server_default=false())
    rotated_key_version: Mapped[int | None] = mapped_column(Integer)
    notified_contacts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    reversed_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    reversed_by: Mapped[str | None] = mapped_column(String(255))
    """The token subject of the platform admin who reversed it."""
