"""The budget overview: SQL pages, memoized epsilons that follow every charge and cap change."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, select

from privacy import budget_views, ledger
from privacy.events import DpSgdEvent
from privacy.ledger import LedgerPolicy
from schema.db import transaction
from schema.models import PrivacyBudget
from tests.privacy.conftest import make_org

EVENT = DpSgdEvent(noise_multiplier=1.0, sample_rate=0.02, steps=300)


def _one_at_a_time(engine: Engine, policy: LedgerPolicy) -> list[ledger.BudgetStatus]:
    """Each budget's status from its own row and curve, without the batch or the memo."""
    with transaction(engine) as session:
        return [
            ledger._status(session, ledger._Budget(*row), policy)
            for row in session.execute(
                select(*ledger._BUDGET_COLUMNS).order_by(
                    PrivacyBudget.organization_id,
                    PrivacyBudget.model_type,
                    PrivacyBudget.unit,
                )
            )
        ]


def test_the_overview_follows_every_charge_and_cap_change(engine: Engine, policy: LedgerPolicy) -> None:
    # Prepare: three tenants, read once (the memo filled).
    orgs = [make_org(engine) for _ in range(3)]
    for org in orgs:
        with transaction(engine) as session:
            ledger.charge(session, org, "digits", EVENT, policy=policy)
    with transaction(engine) as session:
        first = ledger.budget_rows(session, policy=policy)

    # Execute: charge one tenant again and lower another's cap, then read again.
    with transaction(engine) as session:
        ledger.charge(session, orgs[0], "digits", EVENT, policy=policy)
        ledger.set_budget(session, orgs[1], "digits", 1.0, 1e-5, policy=policy, unit="record")
    with transaction(engine) as session:
        second = ledger.budget_rows(session, policy=policy)
        page = budget_views.list_budgets(session, policy=policy, limit=2, offset=1)
        exhausted = budget_views.list_budgets(session, policy=policy, status="exhausted")

    # Assert
    assert second == _one_at_a_time(engine, policy) and second != first
    assert page.total == 3
    assert [(b.organization_id, b.epsilon_spent, b.epsilon_cap, b.status) for b in page.items] == [
        (s.organization_id, s.epsilon_spent, s.epsilon_cap, s.status) for s in second[1:3]
    ]
    assert [b.organization_id for b in exhausted.items] == [str(orgs[1])] and exhausted.total == 1


def test_budget_detail_lists_events_in_order_with_the_accountant(
    engine: Engine, policy: LedgerPolicy
) -> None:
    org = make_org(engine)
    for _ in range(2):
        with transaction(engine) as session:
            ledger.charge(session, org, "digits", EVENT, aggregation_round=1, policy=policy)
    with transaction(engine) as session:
        detail = budget_views.budget_detail(session, org, "digits", policy=policy)
        unknown = budget_views.budget_detail(session, org, "time_estimation", policy=policy)
    assert detail.accountant == "rdp" and [b.unit for b in detail.budgets] == ["record"]
    assert [e.id for e in detail.events] == sorted(e.id for e in detail.events)
    assert detail.events[-1].epsilon_after == detail.budgets[0].epsilon_spent
    assert (unknown.budgets, unknown.events) == ([], [])
    assert uuid.UUID(detail.organization_id) == org
