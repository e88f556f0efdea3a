"""Tenant scoping: every consent-gate read and write starts by resolving the organization and,
where a user is named, that user *within* the organization.

A user of another organization is reported exactly like a user that does not exist, so an error
never tells one tenant about another tenant's people.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.directory import get_organization
from schema.errors import NotFoundError
from schema.models import Organization, User
from schema.validation import parse_uuid


def organization(session: Session, organization_id: str | uuid.UUID) -> Organization:
    return get_organization(session, organization_id)


def member(session: Session, organization_id: str | uuid.UUID, user_id: str | uuid.UUID) -> User:
    """The user ``user_id`` of organization ``organization_id``, else NotFoundError."""
    org = get_organization(session, organization_id)
    uid = parse_uuid(user_id, "user id")
    user = session.scalar(select(User).where(User.id == uid, User.organization_id == org.id))
    if user is None:
        raise NotFoundError(
            f"user {uid} does not exist in organization {org.id}; see `accute-fl user list --org {org.id}`"
        )
    return user
