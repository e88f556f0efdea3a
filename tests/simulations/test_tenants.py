"""Bulk tenant preparation writes what the single-row functions write, audit chains included."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import Engine, func, select

from consent_gate import eligibility, take_snapshot
from consent_gate.policy import ConsentPolicy
from privacy import ledger
from privacy.events import UNITS
from schema import audit, audit_guard
from schema.config import Settings
from schema.db import transaction
from schema.models import ConsentEvent, ImmutableAuditLog, Organization, PrivacyBudget, User, UserConsent
from simulations.synthetic import firm_user_ids
from simulations.tenants import (
    TenantPlan,
    _complete_existing,
    organization_id_for,
    prepare_tenants,
)

TASK = "time_estimation"
REQUIRED = ConsentPolicy.default().required_consents(TASK)


def plans(count: int, *, seed: int = 3, prefix: str = "bulk-", share: float = 0.75) -> list[TenantPlan]:
    made = []
    for index in range(count):
        users = firm_user_ids(seed, index)
        chosen = random.Random(f"{seed}:{index}").sample(users, round(len(users) * share))
        cap = 4.0 if index % 2 == 0 else None
        made.append(
            TenantPlan(f"tenant-{index}", f"{prefix}tenant-{index}", tuple(users), tuple(chosen), cap)
        )
    return made


def count(engine: Engine, model: Any) -> int:
    with transaction(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def chains_ok(engine: Engine) -> list[audit.ChainReport]:
    with transaction(engine) as session:
        reports = audit.verify(session)
    assert reports and all(r.ok for r in reports), [r for r in reports if not r.ok][:3]
    return reports


def test_bulk_preparation_counts_and_audit(engine: Engine) -> None:
    # Prepare
    planned = plans(25)

    # Execute: batches of 10 tenants, so three transactions
    ids = prepare_tenants(
        engine, planned, model_type=TASK, required_consents=REQUIRED, delta=1e-5, batch_tenants=10
    )

    # Assert
    assert ids == [organization_id_for(p.organization_name) for p in planned]
    users = sum(len(p.user_ids) for p in planned)
    grants = sum(len(p.consenting) for p in planned) * len(REQUIRED)
    caps = sum(1 for p in planned if p.epsilon_cap is not None) * len(UNITS)  # a cap in every unit
    assert count(engine, Organization) == 25
    assert count(engine, User) == users
    assert count(engine, UserConsent) == grants
    assert count(engine, ConsentEvent) == grants
    assert count(engine, PrivacyBudget) == caps
    reports = chains_ok(engine)
    assert {r.organization_id for r in reports} == {str(i) for i in ids}
    with transaction(engine) as session:
        actions = Counter(session.scalars(select(ImmutableAuditLog.action)))
    with transaction(engine) as session:
        payloads = [str(d) for d in session.scalars(select(ImmutableAuditLog.action_data))]
    assert not [p for p in payloads if "@" in p], "an address reached the append-only audit log"
    assert actions == {
        "organization.created": 25,
        "user.created": users,
        "consent.granted": grants,
        "privacy_budget.set": caps,
    }


def test_bulk_tenants_are_eligible_with_their_consenting_users(engine: Engine) -> None:
    planned = plans(6)
    ids = prepare_tenants(engine, planned, model_type=TASK, required_consents=REQUIRED, delta=1e-5)

    with transaction(engine) as session:
        verdicts = [eligibility(session, org, TASK, Settings(database_url="sqlite://")) for org in ids]
        snapshots = [take_snapshot(session, org, TASK) for org in ids]
        statuses = [ledger.budget_rows(session, str(org), policy=ledger.LedgerPolicy()) for org in ids]

    assert all(v.eligible for v in verdicts), [v.reason for v in verdicts]
    assert [sorted(map(str, s.user_ids)) for s in snapshots] == [sorted(p.consenting) for p in planned]
    for plan, rows in zip(planned, statuses, strict=True):
        assert sorted((r.model_type, r.unit, r.epsilon_cap, r.epsilon_spent) for r in rows) == (
            [(TASK, unit, plan.epsilon_cap, 0.0) for unit in sorted(UNITS)]
            if plan.epsilon_cap is not None
            else []
        )


def _audit_shape(engine: Engine, organization_id: uuid.UUID, plan: TenantPlan) -> list[tuple[Any, ...]]:
    """The chain's records with the tenant's own names and ids replaced, for comparison."""
    with transaction(engine) as session:
        records = session.scalars(
            select(ImmutableAuditLog)
            .where(ImmutableAuditLog.organization_id == organization_id)
            .order_by(ImmutableAuditLog.id)
        ).all()
        shape = []
        for r in records:
            data = dict(r.action_data)
            if "name" in data:
                data["name"] = data["name"].replace(plan.organization_name, "ORG")
            if "email" in data:
                data["email"] = data["email"].split("@")[1].replace(plan.name, "TENANT")
            shape.append((r.action, r.resource_type, r.resource_id is not None, r.user_id is not None, data))
    return shape


def test_bulk_rows_match_the_single_row_path(engine: Engine) -> None:
    """One tenant through the bulk path, its twin through ``records.grant`` and ``ledger.set_budget``."""
    bulk_plan, single_plan = plans(1, prefix="bulk-")[0], plans(1, prefix="single-")[0]
    prepare_tenants(engine, [bulk_plan], model_type=TASK, required_consents=REQUIRED, delta=1e-5)
    single_id = organization_id_for(single_plan.organization_name)
    single_users = tuple(str(uuid.uuid5(single_id, u)) for u in single_plan.user_ids)
    single_plan = TenantPlan(
        single_plan.name,
        single_plan.organization_name,
        single_users,
        tuple(single_users[single_plan.user_ids.index(u)] for u in single_plan.consenting),
        single_plan.epsilon_cap,
    )
    with transaction(engine) as session:
        session.add(
            Organization(id=single_id, name=single_plan.organization_name, billing_model="pay_as_you_go")
        )
        session.flush()
        audit.append(
            session,
            organization_id=single_id,
            action="organization.created",
            resource_type="organization",
            resource_id=single_id,
            data={
                "name": single_plan.organization_name,
                "billing_model": "pay_as_you_go",
                "source": "simulation",
            },
        )
        _complete_existing(session, single_plan, single_id, TASK, REQUIRED, 1e-5)

    bulk_id = organization_id_for(bulk_plan.organization_name)
    assert _audit_shape(engine, bulk_id, bulk_plan) == _audit_shape(engine, single_id, single_plan)
    with transaction(engine) as session:

        def consent_rows(org: uuid.UUID) -> list[tuple[Any, ...]]:
            rows = session.scalars(select(UserConsent).where(UserConsent.organization_id == org)).all()
            return sorted(
                (c.consent_type, c.consent_given, c.consent_version, c.ip_address, c.withdrawn_at is None)
                for c in rows
            )

        def event_rows(org: uuid.UUID) -> list[tuple[Any, ...]]:
            rows = session.scalars(select(ConsentEvent).where(ConsentEvent.organization_id == org)).all()
            return sorted((e.consent_type, e.action, e.consent_version, e.reason) for e in rows)

        def budget_rows(org: uuid.UUID) -> list[tuple[Any, ...]]:
            rows = session.scalars(select(PrivacyBudget).where(PrivacyBudget.organization_id == org)).all()
            return sorted(
                (b.model_type, b.unit, b.epsilon_cap, b.delta, b.event_count, b.rdp_curve) for b in rows
            )

        assert consent_rows(bulk_id) == consent_rows(single_id)
        assert event_rows(bulk_id) == event_rows(single_id)
        assert budget_rows(bulk_id) == budget_rows(single_id)
    chains_ok(engine)


def test_rerun_completes_existing_tenants_and_keeps_chains(engine: Engine) -> None:
    """A repeated preparation (some tenants exist, some are new, one batch) adds only what is missing."""
    first = plans(4)
    prepare_tenants(engine, first[:2], model_type=TASK, required_consents=REQUIRED, delta=1e-5)
    users_before, consents_before = count(engine, User), count(engine, UserConsent)

    prepare_tenants(engine, first, model_type=TASK, required_consents=REQUIRED, delta=1e-5)

    new_users = sum(len(p.user_ids) for p in first[2:])
    new_grants = sum(len(p.consenting) for p in first[2:]) * len(REQUIRED)
    assert count(engine, Organization) == 4
    assert count(engine, User) == users_before + new_users
    assert count(engine, UserConsent) == consents_before + new_grants
    chains_ok(engine)


def test_append_chains_continues_existing_chains(engine: Engine) -> None:
    """Bulk records follow records appended one by one, and one-by-one appends follow them."""
    org = uuid.uuid4()
    entries = [audit.AuditEntry("test.bulk", "thing", uuid.uuid4(), {"i": i}) for i in range(5)]
    with transaction(engine) as session:
        audit.append(session, organization_id=org, action="test.first", resource_type="thing")
    with transaction(engine) as session:
        written = audit.append_chains(session, {org: entries, uuid.uuid4(): entries[:2]})
        audit.append(session, organization_id=org, action="test.after", resource_type="thing")
    with transaction(engine) as session:
        audit.append(session, organization_id=org, action="test.later", resource_type="thing")

    assert written == 7
    reports = {r.organization_id: r for r in chains_ok(engine)}
    assert reports[str(org)].records == 8
    with transaction(engine) as session:
        actions = session.scalars(
            select(ImmutableAuditLog.action)
            .where(ImmutableAuditLog.organization_id == org)
            .order_by(ImmutableAuditLog.id)
        ).all()
    assert actions == ["test.first", *["test.bulk"] * 5, "test.after", "test.later"]


def test_tampered_bulk_record_breaks_the_chain(engine: Engine) -> None:
    planned = plans(2)
    prepare_tenants(engine, planned, model_type=TASK, required_consents=REQUIRED, delta=1e-5)
    with transaction(engine) as session:
        audit_guard.maintenance(session)  # the table owner, past PostgreSQL's append-only trigger
        record = session.scalars(
            select(ImmutableAuditLog).where(ImmutableAuditLog.action == "consent.granted").limit(1)
        ).one()
        record.action_data = {**record.action_data, "consent_version": "2.0"}

    with transaction(engine) as session:
        broken = [r for r in audit.verify(session) if not r.ok]

    assert len(broken) == 1
    assert broken[0].reason == "record_hash does not match the record's content"
