"""``ledger.charge_many`` (a round's dispatch) equals ``ledger.charge`` of each in turn, on both backends."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from privacy import ledger
from privacy.events import DpEvent, DpSgdEvent, NonPrivateEvent
from privacy.ledger import Charge, ChargeResult, LedgerPolicy
from schema import audit
from schema.db import transaction
from schema.errors import BudgetExceededError, ConflictError, NotFoundError
from schema.models import FederatedLearningContribution, ImmutableAuditLog, PrivacyBudget, PrivacyLedgerEvent
from tests.privacy.conftest import make_org
from tests.privacy.test_ledger import MODEL, add_contribution, counts

#: Per tenant: earlier events, its cap (None: the default), this round's event.
TENANTS: list[tuple[list[DpEvent], float | None, DpEvent]] = [
    ([], None, DpSgdEvent(1.1, 0.1, 20)),  # a first charge: the budget row is created
    ([DpSgdEvent(1.1, 0.1, 20)] * 3, None, DpSgdEvent(1.1, 0.1, 20)),
    ([DpSgdEvent(2.0, 0.05, 10)], 1.0, DpSgdEvent(0.9, 0.2, 50)),  # over its cap: refused
    ([], None, DpSgdEvent(0.5, 0.5, 200)),  # a new (blank) row over the default cap: refused, none left
    ([DpSgdEvent(2.0, 0.05, 10)], None, NonPrivateEvent("record")),  # never refused
]


def federation(engine: Engine, policy: LedgerPolicy) -> list[tuple[uuid.UUID, uuid.UUID, DpEvent]]:
    """Organizations with the histories and caps of ``TENANTS``: (organization, contribution, event)."""
    made = []
    for history, cap, event in TENANTS:
        org = make_org(engine)
        with transaction(engine) as session:
            if cap is not None:
                ledger.set_budget(session, org, MODEL, cap, 1e-5, policy=policy, unit="record")
            for round_, earlier in enumerate(history, start=1):
                ledger.charge(session, org, MODEL, earlier, aggregation_round=round_, policy=policy)
        made.append((org, add_contribution(engine, org, round_=9), event))
    return made


def state(engine: Engine, org: uuid.UUID, contribution: uuid.UUID) -> dict[str, Any]:
    """What a charge leaves of one tenant, without ids: budget row, events, consumed, audit payloads."""
    with transaction(engine) as session:
        budget = session.scalar(select(PrivacyBudget).where(PrivacyBudget.organization_id == org))
        events = session.scalars(
            select(PrivacyLedgerEvent)
            .where(PrivacyLedgerEvent.organization_id == org)
            .order_by(PrivacyLedgerEvent.id)
        ).all()
        consumed = session.get(FederatedLearningContribution, contribution)
        records = session.scalars(
            select(ImmutableAuditLog)
            .where(ImmutableAuditLog.organization_id == org)
            .order_by(ImmutableAuditLog.id)
        ).all()
        assert consumed is not None
        return {
            "budget": None
            if budget is None
            else (
                budget.rdp_curve,
                budget.event_count,
                budget.last_round,
                budget.epsilon_spent,
                budget.epsilon_key,
            ),
            "events": [
                (
                    e.mechanism,
                    e.noise_multiplier,
                    e.sample_rate,
                    e.steps,
                    e.aggregation_round,
                    e.contribution_id == contribution,
                )
                for e in events
            ],
            "consumed": consumed.privacy_budget_consumed,
            "audit": [
                (
                    r.action,
                    {
                        k: v
                        for k, v in r.action_data.items()
                        if k not in ("event_id", "contribution_id", "ledger_event_id")
                    },
                )
                for r in records
                if r.action != "organization.created"
            ],
        }


def outcome(result: ChargeResult | BudgetExceededError) -> tuple[Any, ...]:
    if isinstance(result, BudgetExceededError):
        return ("refused", str(result).split(" would raise ")[1])
    return ("charged", result.epsilon_before, result.epsilon_after, result.epsilon_cap, result.unit)


def test_charge_many_equals_charging_each_in_turn(engine: Engine, policy: LedgerPolicy) -> None:
    # Prepare: two identical federations, one charged tenant by tenant, one in a batch.
    one_by_one, batched = federation(engine, policy), federation(engine, policy)

    # Execute
    singles: list[ChargeResult | BudgetExceededError] = []
    for org, contribution, event in one_by_one:
        with transaction(engine) as session:
            try:
                singles.append(ledger.charge(session, org, MODEL, event, contribution, 9, policy=policy))
            except BudgetExceededError as exc:
                singles.append(exc)
    with transaction(engine) as session:
        many = ledger.charge_many(
            session,
            MODEL,
            [Charge(org, event, contribution) for org, contribution, event in batched],
            9,
            policy=policy,
        )

    # Assert: the same decisions and epsilons (bit for bit), the same rows and audit payloads, and
    # every chain intact; the refused blank row left nothing behind in either.
    assert [outcome(r) for r in many] == [outcome(r) for r in singles]
    assert [type(r) for r in many] == [
        ChargeResult,
        ChargeResult,
        BudgetExceededError,
        BudgetExceededError,
        ChargeResult,
    ]
    for (org_a, contribution_a, _), (org_b, contribution_b, _) in zip(one_by_one, batched, strict=True):
        assert state(engine, org_b, contribution_b) == state(engine, org_a, contribution_a)
    for result in many:
        if isinstance(result, ChargeResult):
            assert result.contribution_id is not None and result.event_id > 0
    with transaction(engine) as session:
        assert all(report.ok for report in audit.verify(session))
        blank = batched[3][0]
        assert (
            session.scalar(
                select(func.count()).select_from(PrivacyBudget).where(PrivacyBudget.organization_id == blank)
            )
            == 0
        )


def test_two_charges_of_one_budget_row_compose_as_in_turn(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare
    other = make_org(engine)
    first, second = add_contribution(engine, org), add_contribution(engine, org)
    event = DpSgdEvent(1.1, 0.1, 20)

    # Execute: the second charge of the same row must see the first's curve.
    with transaction(engine) as session:
        results = ledger.charge_many(
            session,
            MODEL,
            [Charge(org, event, first), Charge(org, event, second), Charge(other, event)],
            1,
            policy=policy,
        )
    with transaction(engine) as session:
        twice = ledger.spent(session, org, MODEL, policy=policy)

    # Assert
    assert isinstance(results[0], ChargeResult) and isinstance(results[1], ChargeResult)
    assert results[1].epsilon_before == results[0].epsilon_after
    assert twice == results[1].epsilon_after > results[0].epsilon_after


def test_a_bad_contribution_refuses_the_whole_batch_before_anything_is_written(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare: one good charge, one naming a contribution of another organization.
    other = make_org(engine)
    theirs = add_contribution(engine, other)
    before = counts(engine)

    # Execute
    with pytest.raises(NotFoundError), transaction(engine) as session:
        ledger.charge_many(
            session,
            MODEL,
            [Charge(other, DpSgdEvent(1.1, 0.1, 20)), Charge(org, DpSgdEvent(1.1, 0.1, 20), theirs)],
            1,
            policy=policy,
        )

    # Assert
    assert counts(engine) == before


def test_a_contribution_charged_already_is_a_conflict(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare
    contribution = add_contribution(engine, org)
    with transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(1.1, 0.1, 20), contribution, 1, policy=policy)

    # Execute / Assert
    with pytest.raises(ConflictError), transaction(engine) as session:
        ledger.charge_many(
            session, MODEL, [Charge(org, DpSgdEvent(1.1, 0.1, 20), contribution)], 2, policy=policy
        )
