"""Consent records: grant, withdraw and read a user's consents, with their full history.

``user_consents`` holds the current state of each (organization, user, consent type);
``consent_events`` keeps every grant and withdrawal, so a withdrawal never erases the fact of the
earlier grant. Each change appends an audit record (consent type and version only: the IP address
and user agent are personal data and stay out of the immutable log). A free-text ``reason`` goes
into the audit record only sealed under the user's data key (with a ``vault``), so an erasure makes
it unreadable; the reasons the product writes itself (``dsr:<type>:<request id>``) stay plain.

API (all in the caller's transaction):
    grant(session, organization_id, user_id, consent_type, version="1.0", *, ip_address=None,
          user_agent=None, reason=None, vault=None) -> ConsentChange
    withdraw(session, organization_id, user_id, consent_type, *, ip_address=None, user_agent=None,
             reason=None, vault=None) -> ConsentChange
    current_consents(session, organization_id, user_id=None) -> list[UserConsent]
    history(session, organization_id, user_id) -> list[ConsentEvent]
    consent_as_dict(consent) / event_as_dict(event) -> dict
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consent_gate import scope
from schema import audit, events
from schema.errors import ConflictError, InvalidInputError, NotFoundError
from schema.listings import consent_as_dict as consent_as_dict
from schema.listings import consents_query
from schema.models import ConsentEvent, User, UserConsent
from schema.personal_data import PersonalDataVault
from schema.timeutil import iso, utcnow
from schema.validation import clean_name, one_of
from schema.vocab import CONSENT_TYPES
from schema.vocab import DEFAULT_CONSENT_VERSION as DEFAULT_CONSENT_VERSION

#: Reasons the product itself writes (a data subject request's id): no personal data in them.
SYSTEM_REASON = re.compile(r"^dsr:[a-z]+:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class ConsentChange:
    """The consent's state after the call; ``changed`` is False when it already was in that state."""

    consent: UserConsent
    changed: bool


def clean_ip(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise InvalidInputError(f"'{value}' is not an IPv4 or IPv6 address") from None


def clean_user_agent(value: str | None) -> str | None:
    return None if value is None or not value.strip() else clean_name(value, "user agent", 1000)


def _current_row(session: Session, user: User, consent_type: str) -> UserConsent | None:
    query = select(UserConsent).where(
        UserConsent.organization_id == user.organization_id,
        UserConsent.user_id == user.id,
        UserConsent.consent_type == consent_type,
    )
    return session.scalar(query.with_for_update())


def _record(
    session: Session,
    consent: UserConsent,
    action: str,
    occurred_at: datetime,
    ip_address: str | None,
    user_agent: str | None,
    reason: str | None,
    vault: PersonalDataVault | None,
) -> None:
    session.add(
        ConsentEvent(
            organization_id=consent.organization_id,
            user_id=consent.user_id,
            consent_type=consent.consent_type,
            action=action,
            consent_version=consent.consent_version,
            ip_address=ip_address,
            user_agent=user_agent,
            reason=reason,
            occurred_at=occurred_at,
        )
    )
    try:
        session.flush()
    except IntegrityError:  # a concurrent first grant of the same consent won the UNIQUE
        raise ConflictError(
            f"consent {consent.consent_type} of user {consent.user_id} changed concurrently; retry"
        ) from None
    data: dict[str, Any] = {"consent_type": consent.consent_type, "consent_version": consent.consent_version}
    if reason and SYSTEM_REASON.match(reason):
        data["reason"] = reason
    elif reason and vault is not None:
        data["reason_sealed"] = vault.seal(
            session, consent.organization_id, consent.user_id, "reason", reason
        )
    audit.append(
        session,
        organization_id=consent.organization_id,
        action=f"consent.{action}",
        resource_type="user_consent",
        resource_id=consent.id,
        user_id=consent.user_id,
        data=data,
    )
    events.append(
        session,
        event_type=f"accute.consent.{action}",
        organization_id=consent.organization_id,
        payload={
            "consent_id": consent.id,
            "user_id": consent.user_id,
            "consent_type": consent.consent_type,
            "consent_version": consent.consent_version,
        },
    )


def grant(
    session: Session,
    organization_id: str | uuid.UUID,
    user_id: str | uuid.UUID,
    consent_type: str,
    version: str = DEFAULT_CONSENT_VERSION,
    *,
    ip_address: str | None = None,
    user_agent: str | None = None,
    reason: str | None = None,
    vault: PersonalDataVault | None = None,
) -> ConsentChange:
    """Record that the user gives ``consent_type`` (version ``version``); a no-op if already so."""
    one_of(consent_type, CONSENT_TYPES, "consent type")
    version = clean_name(version, "consent version", 50)
    ip, agent = clean_ip(ip_address), clean_user_agent(user_agent)
    user = scope.member(session, organization_id, user_id)
    consent = _current_row(session, user, consent_type)
    if consent is not None and consent.consent_given and consent.consent_version == version:
        return ConsentChange(consent, changed=False)
    now = utcnow()
    if consent is None:
        consent = UserConsent(
            organization_id=user.organization_id, user_id=user.id, consent_type=consent_type, created_at=now
        )
        session.add(consent)
    consent.consent_given = True
    consent.consent_version = version
    consent.ip_address, consent.user_agent = ip, agent
    consent.given_at, consent.withdrawn_at = now, None
    consent.updated_at = now
    _record(session, consent, "granted", now, ip, agent, reason, vault)
    return ConsentChange(consent, changed=True)


def withdraw(
    session: Session,
    organization_id: str | uuid.UUID,
    user_id: str | uuid.UUID,
    consent_type: str,
    *,
    ip_address: str | None = None,
    user_agent: str | None = None,
    reason: str | None = None,
    vault: PersonalDataVault | None = None,
) -> ConsentChange:
    """Record that the user withdraws ``consent_type``; the earlier grant stays in the history."""
    one_of(consent_type, CONSENT_TYPES, "consent type")
    ip, agent = clean_ip(ip_address), clean_user_agent(user_agent)
    user = scope.member(session, organization_id, user_id)
    consent = _current_row(session, user, consent_type)
    if consent is None:
        raise NotFoundError(f"user {user.id} never gave consent {consent_type}; nothing to withdraw")
    if not consent.consent_given:
        return ConsentChange(consent, changed=False)
    now = utcnow()
    consent.consent_given = False
    consent.withdrawn_at = now
    consent.updated_at = now
    _record(session, consent, "withdrawn", now, ip, agent, reason, vault)
    return ConsentChange(consent, changed=True)


def current_consents(
    session: Session, organization_id: str | uuid.UUID, user_id: str | uuid.UUID | None = None
) -> list[UserConsent]:
    """The organization's consents (or one of its users'), by user then consent type."""
    if user_id is None:
        query = consents_query(scope.organization(session, organization_id).id)
    else:
        user = scope.member(session, organization_id, user_id)
        query = consents_query(user.organization_id, user.id)
    return list(session.scalars(select(UserConsent).from_statement(query)))


def history(
    session: Session, organization_id: str | uuid.UUID, user_id: str | uuid.UUID
) -> list[ConsentEvent]:
    """Every grant and withdrawal of the user, oldest first."""
    user = scope.member(session, organization_id, user_id)
    query = (
        select(ConsentEvent)
        .where(ConsentEvent.organization_id == user.organization_id, ConsentEvent.user_id == user.id)
        .order_by(ConsentEvent.occurred_at, ConsentEvent.consent_type)
    )
    return list(session.scalars(query))


def event_as_dict(event: ConsentEvent) -> dict[str, Any]:
    return {
        "user_id": str(event.user_id),
        "consent_type": event.consent_type,
        "action": event.action,
        "consent_version": event.consent_version,
        "ip_address": None if event.ip_address is None else str(event.ip_address),
        "user_agent": event.user_agent,
        "reason": event.reason,
        "occurred_at": iso(event.occurred_at),
    }
