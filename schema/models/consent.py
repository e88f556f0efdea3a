"""Consent tables (spec §5.1): what each user allowed, and their data subject requests. The tables
are ``schema.tables.consent``'s (Core, so read-only commands query them without the ORM)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Mapped

from schema.base import Base
from schema.tables.consent import data_subject_requests, user_consents


class UserConsent(Base):
    """The current state of one consent type for one user of one organization."""

    __table__ = user_consents

    id: Mapped[uuid.UUID]
    organization_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    consent_type: Mapped[str]
    consent_given: Mapped[bool]
    consent_version: Mapped[str]
    ip_address: Mapped[str | None]
    user_agent: Mapped[str | None]
    given_at: Mapped[datetime | None]
    withdrawn_at: Mapped[datetime | None]
    created_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]


class DataSubjectRequest(Base):
    """A GDPR/CCPA request; the deadline is 30 days after filing."""

    __table__ = data_subject_requests

    id: Mapped[uuid.UUID]
    organization_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    request_type: Mapped[str]
    status: Mapped[str]
    request_details: Mapped[dict[str, Any]]
    response_details: Mapped[dict[str, Any] | None]
    deadline: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    processed_by: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime | None]
