"""Organizations and users: the minimal admin that later features and their users stand on."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from schema import audit
from schema.errors import ConflictError, NotFoundError
from schema.listings import missing_organization, organizations_query
from schema.listings import organization_as_dict as organization_as_dict
from schema.listings import user_as_dict as user_as_dict
from schema.models import Organization, User
from schema.personal_data import PersonalDataVault
from schema.validation import clean_email, clean_name, one_of, parse_uuid
from schema.vocab import BILLING_MODELS


def create_organization(session: Session, name: str, billing_model: str = "pay_as_you_go") -> Organization:
    name = clean_name(name, "organization name")
    one_of(billing_model, BILLING_MODELS, "billing model")
    if session.scalar(select(Organization.id).where(Organization.name == name)) is not None:
        raise ConflictError(f"an organization named '{name}' already exists; pick another name")
    organization = Organization(name=name, billing_model=billing_model)
    session.add(organization)
    try:
        session.flush()
    except IntegrityError:  # a concurrent writer took the name between our check and insert
        raise ConflictError(f"an organization named '{name}' already exists; pick another name") from None
    audit.append(
        session,
        organization_id=organization.id,
        action="organization.created",
        resource_type="organization",
        resource_id=organization.id,
        data={"name": name, "billing_model": billing_model},
    )
    return organization


def list_organizations(session: Session) -> list[Organization]:
    return list(session.scalars(select(Organization).from_statement(organizations_query())))


def get_organization(session: Session, organization_id: str | uuid.UUID) -> Organization:
    org_id = parse_uuid(organization_id, "organization id")
    organization = session.get(Organization, org_id)
    if organization is None:
        raise missing_organization(org_id)
    return organization


def find_organization(session: Session, name_or_id: str | uuid.UUID) -> Organization:
    """An organization by its id or, for people at a terminal, by its (unique) name."""
    if isinstance(name_or_id, uuid.UUID):
        return get_organization(session, name_or_id)
    try:
        org_id = uuid.UUID(str(name_or_id).strip())
    except ValueError:
        name = str(name_or_id).strip()
        organization = session.scalar(select(Organization).where(Organization.name == name))
        if organization is None:
            raise NotFoundError(
                f"no organization is named '{name[:100]}'; give its id or name from `accute-fl org list`"
            ) from None
        return organization
    return get_organization(session, org_id)


def create_user(
    session: Session,
    organization_id: str | uuid.UUID,
    email: str,
    vault: PersonalDataVault | None = None,
) -> User:
    """Create a user; the audit record names the user by id only.

    With a ``vault`` it also carries the address sealed under the user's own data key and its keyed
    fingerprint (readable and provable until an erasure shreds that key); never the address itself.
    """
    organization = get_organization(session, organization_id)
    address = clean_email(email)
    taken = select(User.id).where(User.organization_id == organization.id, User.email == address)
    if session.scalar(taken) is not None:
        raise ConflictError(f"user {address} already exists in organization {organization.id}")
    user = User(organization_id=organization.id, email=address)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise ConflictError(f"user {address} already exists in organization {organization.id}") from None
    audit.append(
        session,
        organization_id=organization.id,
        action="user.created",
        resource_type="user",
        resource_id=user.id,
        user_id=user.id,
        data=_sealed_email(session, vault, user, address),
    )
    return user


def _sealed_email(
    session: Session, vault: PersonalDataVault | None, user: User, address: str
) -> dict[str, Any]:
    if vault is None:
        return {}
    return {
        "email_sealed": vault.seal(session, user.organization_id, user.id, "email", address),
        "email_fingerprint": vault.fingerprint(session, user.organization_id, user.id, "email", address),
    }


def list_users(session: Session, organization_id: str | uuid.UUID) -> list[User]:
    organization = get_organization(session, organization_id)
    query = select(User).where(User.organization_id == organization.id).order_by(User.created_at, User.email)
    return list(session.scalars(query))


def count_rows(session: Session, model: type[Organization] | type[User]) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)
