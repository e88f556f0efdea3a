"""Listings that read-only commands print: organizations, consents and data subject requests.

Core statements on ``schema.tables`` run on a ``Connection``, so ``accute-fl org list``,
``dsr list`` and ``consent show --org`` never import ``sqlalchemy.orm`` (a third of the start-up
budget); the consent tables are built by the queries that read them, not by ``org list`` or
``budget show``. The ORM functions (``directory.list_organizations``, ``records.current_consents``,
``dsr.list_requests``) load their objects from the same statements, and the ``*_as_dict`` functions
take an ORM object or a row alike: one query and one output shape for the CLI, the API and the core.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, Select, select

from schema.errors import NotFoundError
from schema.tables.organization import organizations
from schema.timeutil import as_utc, iso, utcnow
from schema.validation import one_of, parse_uuid
from schema.vocab import DSR_OPEN_STATUSES, DSR_STATUSES

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy.orm import Session

    from schema.models import DataSubjectRequest, Organization, User, UserConsent

    #: A Core connection (``schema.db.reading``), or a session where the caller already has one.
    Reader: TypeAlias = Connection | Session


def missing_organization(org_id: uuid.UUID) -> NotFoundError:
    return NotFoundError(f"organization {org_id} does not exist; see `accute-fl org list`")


def require_organization(connection: Reader, organization_id: str | uuid.UUID) -> uuid.UUID:
    """The organization's id, else NotFoundError (as ``directory.get_organization``)."""
    org_id = parse_uuid(organization_id, "organization id")
    if connection.scalar(select(organizations.c.id).where(organizations.c.id == org_id)) is None:
        raise missing_organization(org_id)
    return org_id


def organization_names(connection: Reader, ids: set[str]) -> dict[str, str]:
    """Organization id (text) -> name, for the ids given."""
    if not ids:
        return {}
    wanted = [uuid.UUID(i) for i in ids]
    names: dict[str, str] = {}
    for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
        query = select(organizations.c.id, organizations.c.name).where(
            organizations.c.id.in_(wanted[start : start + 900])
        )
        names.update((str(org_id), name) for org_id, name in connection.execute(query))
    return names


def organizations_query() -> Select[Any]:
    """Every organization, oldest first."""
    return select(organizations).order_by(organizations.c.created_at, organizations.c.name)


def list_organizations(connection: Connection) -> list[Row[Any]]:
    return list(connection.execute(organizations_query()))


def consents_query(org_id: uuid.UUID, user_id: uuid.UUID | None = None) -> Select[Any]:
    """An organization's consents (or one of its users'), by user then consent type."""
    from schema.tables.consent import user_consents  # `org list` and `budget show` build no consent table

    query = select(user_consents).where(user_consents.c.organization_id == org_id)
    if user_id is not None:
        query = query.where(user_consents.c.user_id == user_id)
    return query.order_by(user_consents.c.user_id, user_consents.c.consent_type)


def current_consents(connection: Connection, organization_id: str | uuid.UUID) -> list[Row[Any]]:
    """The organization's consents; NotFoundError for an unknown organization."""
    return list(connection.execute(consents_query(require_organization(connection, organization_id))))


def requests_query(org_id: uuid.UUID | None = None, status: str | None = None) -> Select[Any]:
    """Requests by deadline (soonest first), optionally of one organization and one status."""
    from schema.tables.consent import data_subject_requests

    query = select(data_subject_requests)
    if org_id is not None:
        query = query.where(data_subject_requests.c.organization_id == org_id)
    if status is not None:
        query = query.where(data_subject_requests.c.status == one_of(status, DSR_STATUSES, "status"))
    return query.order_by(data_subject_requests.c.deadline, data_subject_requests.c.id)


def list_requests(
    connection: Connection, organization_id: str | uuid.UUID | None = None, status: str | None = None
) -> list[Row[Any]]:
    org_id = None if organization_id is None else require_organization(connection, organization_id)
    return list(connection.execute(requests_query(org_id, status)))


def organization_as_dict(organization: Organization | Row[Any]) -> dict[str, Any]:
    return {
        "id": str(organization.id),
        "name": organization.name,
        "billing_model": organization.billing_model,
        "created_at": iso(organization.created_at),
    }


def user_as_dict(user: User | Row[Any]) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "organization_id": str(user.organization_id),
        "email": user.email,
        "created_at": iso(user.created_at),
    }


def consent_as_dict(consent: UserConsent | Row[Any]) -> dict[str, Any]:
    return {
        "id": str(consent.id),
        "organization_id": str(consent.organization_id),
        "user_id": str(consent.user_id),
        "consent_type": consent.consent_type,
        "consent_given": consent.consent_given,
        "consent_version": consent.consent_version,
        "ip_address": None if consent.ip_address is None else str(consent.ip_address),
        "user_agent": consent.user_agent,
        "given_at": iso(consent.given_at),
        "withdrawn_at": iso(consent.withdrawn_at),
    }


def is_overdue(request: DataSubjectRequest | Row[Any], now: datetime | None = None) -> bool:
    return request.status in DSR_OPEN_STATUSES and as_utc(request.deadline) < (now or utcnow())


def request_as_dict(request: DataSubjectRequest | Row[Any], include_response: bool = True) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": str(request.id),
        "organization_id": str(request.organization_id),
        "user_id": str(request.user_id),
        "request_type": request.request_type,
        "status": request.status,
        "deadline": iso(request.deadline),
        "overdue": is_overdue(request),
        "created_at": iso(request.created_at),
        "completed_at": iso(request.completed_at),
        "processed_by": None if request.processed_by is None else str(request.processed_by),
        "request_details": request.request_details,
    }
    if include_response:
        record["response_details"] = request.response_details
    return record
