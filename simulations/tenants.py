"""Bulk preparation of a simulation's tenants: organizations, users, consents, budget caps.

Ten thousand tenants prepared row by row (an ORM flush and an audit append per consent) take
most of an hour; here a batch of up to ``BATCH_TENANTS`` tenants is one transaction whose rows go
in a few bulk inserts (COPY on PostgreSQL, executemany on SQLite), audit records included:
every organization, user, consent and cap still gets its record, hash-chained per organization
exactly as ``schema.audit.append`` would chain it. The rows are the ones the single-row
functions write (``records.grant``, ``ledger.set_budget``); tests compare the two.

Organizations that already exist (a resumed or repeated simulation) take the single-row path,
which adds only what is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from consent_gate.records import DEFAULT_CONSENT_VERSION, grant
from privacy import ledger
from privacy.events import UNITS, check_delta, check_epsilon
from schema import audit
from schema.audit import AuditEntry
from schema.bulk import insert_rows
from schema.db import transaction
from schema.models import ConsentEvent, Organization, PrivacyBudget, User, UserConsent
from schema.timeutil import utcnow

#: Tenants per transaction.
BATCH_TENANTS = 1000

SIMULATION_NAMESPACE = uuid.UUID("5d0c3f4e-6a7b-4c1d-9e2f-a1b2c3d4e5f6")
BILLING_MODEL = "pay_as_you_go"
REASON = "simulation"


@dataclass(frozen=True)
class TenantPlan:
    """What one tenant should hold: its firm's users, those who consent (in grant order), its cap."""

    name: str
    organization_name: str
    user_ids: tuple[str, ...]
    consenting: tuple[str, ...]
    epsilon_cap: float | None


def organization_id_for(organization_name: str) -> uuid.UUID:
    """The id a simulation gives an organization: derived from its (unique) name, so the same
    seed gives the same run (nodes mix the id into their noise seed) in a fresh database."""
    return uuid.uuid5(SIMULATION_NAMESPACE, organization_name)


def user_email(user_id: str, tenant: str) -> str:
    return f"{user_id[:8]}@{tenant}.example"


def prepare_tenants(
    engine: Engine,
    plans: Sequence[TenantPlan],
    *,
    model_type: str,
    required_consents: Sequence[str],
    delta: float,
    batch_tenants: int = BATCH_TENANTS,
) -> list[uuid.UUID]:
    """Create (or complete) every planned tenant; returns their organization ids, in plan order."""
    model_type = ledger.clean_model_type(model_type)
    delta = check_delta(delta)
    for plan in plans:
        if plan.epsilon_cap is not None:
            check_epsilon(plan.epsilon_cap, "epsilon cap")
    ids: list[uuid.UUID] = []
    for start in range(0, len(plans), batch_tenants):
        batch = plans[start : start + batch_tenants]
        with transaction(engine) as session:
            names = [plan.organization_name for plan in batch]
            query = select(Organization.name, Organization.id).where(Organization.name.in_(names))
            existing: dict[str, uuid.UUID] = {name: org for name, org in session.execute(query)}
            fresh = [plan for plan in batch if plan.organization_name not in existing]
            _create_fresh(session, fresh, model_type, required_consents, delta)
            for plan in batch:
                if plan.organization_name in existing:
                    _complete_existing(
                        session, plan, existing[plan.organization_name], model_type, required_consents, delta
                    )
                ids.append(
                    existing.get(plan.organization_name) or organization_id_for(plan.organization_name)
                )
    return ids


def _create_fresh(
    session: Session,
    plans: Sequence[TenantPlan],
    model_type: str,
    required_consents: Sequence[str],
    delta: float,
) -> None:
    """New tenants in bulk: the rows and audit records the single-row functions would write."""
    if not plans:
        return
    now = utcnow()
    organizations: list[tuple[object, ...]] = []
    users: list[tuple[object, ...]] = []
    consents: list[tuple[object, ...]] = []
    events: list[tuple[object, ...]] = []
    budgets: list[tuple[object, ...]] = []
    chains: dict[uuid.UUID, list[AuditEntry]] = {}
    for plan in plans:
        org = organization_id_for(plan.organization_name)
        organizations.append((org, plan.organization_name, BILLING_MODEL))
        chain = chains[org] = [
            AuditEntry(
                "organization.created",
                "organization",
                org,
                {"name": plan.organization_name, "billing_model": BILLING_MODEL, "source": REASON},
            )
        ]
        for user_id in plan.user_ids:
            uid, email = uuid.UUID(user_id), user_email(user_id, plan.name)
            users.append((uid, org, email))
            # Ids only: an append-only record never holds an address (erasure could not reach it).
            chain.append(AuditEntry("user.created", "user", uid, {"source": REASON}, uid))
        for user_id in plan.consenting:
            uid = uuid.UUID(user_id)
            for consent_type in required_consents:
                consent_id = uuid.uuid4()
                consents.append(
                    (consent_id, org, uid, consent_type, True, DEFAULT_CONSENT_VERSION, now, None, now, now)
                )
                events.append(
                    (uuid.uuid4(), org, uid, consent_type, "granted", DEFAULT_CONSENT_VERSION, REASON, now)
                )
                data = {
                    "consent_type": consent_type,
                    "consent_version": DEFAULT_CONSENT_VERSION,
                }  # as records.grant without a vault: a reason enters the audit log only sealed
                chain.append(AuditEntry("consent.granted", "user_consent", consent_id, data, uid))
        if plan.epsilon_cap is not None:
            # As ledger.set_budget without a unit: the cap in every unit, each its own ledger.
            for unit in UNITS:
                budget_id = uuid.uuid4()
                budgets.append((budget_id, org, model_type, unit, float(plan.epsilon_cap), delta, 0))
                capped: dict[str, Any] = {
                    "model_type": model_type,
                    "unit": unit,
                    "previous": {"epsilon_cap": None, "delta": None},
                    "epsilon_cap": float(plan.epsilon_cap),
                    "delta": delta,
                }
                chain.append(AuditEntry("privacy_budget.set", "privacy_budget", budget_id, capped))
    table = {
        "organizations": Organization.__table__,
        "users": User.__table__,
        "consents": UserConsent.__table__,
        "events": ConsentEvent.__table__,
        "budgets": PrivacyBudget.__table__,
    }
    insert_rows(session, table["organizations"], ("id", "name", "billing_model"), organizations)  # type: ignore[arg-type]
    insert_rows(session, table["users"], ("id", "organization_id", "email"), users)  # type: ignore[arg-type]
    insert_rows(
        session,
        table["consents"],  # type: ignore[arg-type]
        (
            "id",
            "organization_id",
            "user_id",
            "consent_type",
            "consent_given",
            "consent_version",
            "given_at",
            "withdrawn_at",
            "created_at",
            "updated_at",
        ),
        consents,
    )
    insert_rows(
        session,
        table["events"],  # type: ignore[arg-type]
        (
            "id",
            "organization_id",
            "user_id",
            "consent_type",
            "action",
            "consent_version",
            "reason",
            "occurred_at",
        ),
        events,
    )
    insert_rows(
        session,
        table["budgets"],  # type: ignore[arg-type]
        ("id", "organization_id", "model_type", "unit", "epsilon_cap", "delta", "event_count"),
        budgets,
    )
    audit.append_chains(session, chains)


def _complete_existing(
    session: Session,
    plan: TenantPlan,
    organization_id: uuid.UUID,
    model_type: str,
    required_consents: Sequence[str],
    delta: float,
) -> None:
    """An organization from an earlier run: add missing users, grant missing consents, set the cap."""
    existing = set(session.scalars(select(User.id).where(User.organization_id == organization_id)))
    for user_id in plan.user_ids:
        uid = uuid.UUID(user_id)
        if uid not in existing:
            email = user_email(user_id, plan.name)
            session.add(User(id=uid, organization_id=organization_id, email=email))
            session.flush()
            audit.append(
                session,
                organization_id=organization_id,
                action="user.created",
                resource_type="user",
                resource_id=uid,
                user_id=uid,
                data={"source": REASON},
            )
    for user_id in plan.consenting:
        for consent_type in required_consents:
            grant(session, organization_id, user_id, consent_type, reason=REASON)
    if plan.epsilon_cap is not None:
        policy = ledger.LedgerPolicy(default_delta=delta)
        ledger.set_budget(session, organization_id, model_type, plan.epsilon_cap, delta, policy=policy)
