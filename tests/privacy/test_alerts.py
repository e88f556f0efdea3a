"""Budget alerts: a crossing of 80 % / 100 % of a cap is recorded once, with the charge, audited."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from privacy import accounting, budget_views, ledger
from privacy.events import DpSgdEvent, NonPrivateEvent
from privacy.ledger import LedgerPolicy
from schema.db import transaction
from schema.errors import BudgetExceededError
from schema.models import HubOutbox, ImmutableAuditLog, PrivacyBudgetAlert

#: Three charges of this event reach 62 %, 83 % and exactly 100 % of a cap set to their epsilon.
EVENT = DpSgdEvent(noise_multiplier=1.0, sample_rate=0.02, steps=300)


def _epsilon_after(charges: int) -> float:
    return accounting.epsilon_from_rdp(accounting.compose([EVENT] * charges), 1e-5)


def _alerts(engine: Engine, org: uuid.UUID) -> list[tuple[str, float, int | None]]:
    with transaction(engine) as session:
        rows = session.scalars(
            select(PrivacyBudgetAlert)
            .where(PrivacyBudgetAlert.organization_id == org)
            .order_by(PrivacyBudgetAlert.epsilon, PrivacyBudgetAlert.threshold)
        )
        return [(a.threshold, a.epsilon_cap, a.ledger_event_id) for a in rows]


def _charge(engine: Engine, org: uuid.UUID, policy: LedgerPolicy, event: object = EVENT) -> int:
    with transaction(engine) as session:
        return ledger.charge(session, org, "digits", event, policy=policy).event_id  # type: ignore[arg-type]


def test_crossings_are_recorded_once_with_the_charge_that_crossed(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare: a cap equal to the epsilon of three charges.
    cap = _epsilon_after(3)
    assert _epsilon_after(1) < 0.8 * cap <= _epsilon_after(2) < cap
    with transaction(engine) as session:
        ledger.set_budget(session, org, "digits", cap, 1e-5, policy=policy, unit="record")

    # Execute
    first = _charge(engine, org, policy)
    after_first = _alerts(engine, org)
    second = _charge(engine, org, policy)
    third = _charge(engine, org, policy)
    with pytest.raises(BudgetExceededError), transaction(engine) as session:
        ledger.charge(session, org, "digits", EVENT, policy=policy)

    # Assert: near_cap with the second charge, exhausted with the third, each once.
    assert first and after_first == []
    assert _alerts(engine, org) == [("near_cap", cap, second), ("exhausted", cap, third)]
    with transaction(engine) as session:
        actions = list(
            session.scalars(
                select(ImmutableAuditLog.action)
                .where(
                    ImmutableAuditLog.organization_id == org,
                    ImmutableAuditLog.action.like("privacy_budget.%"),
                )
                .order_by(ImmutableAuditLog.id)
            )
        )
        status = ledger.budget_rows(session, org, policy=policy)[0].status
    assert actions == ["privacy_budget.set", "privacy_budget.near_cap", "privacy_budget.exhausted"]
    assert status == "exhausted"


def test_a_raised_cap_alerts_again_and_a_repeated_cap_does_not(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare: near_cap under cap 1 (two charges), then the cap raised so it is ok again.
    cap = _epsilon_after(3)
    with transaction(engine) as session:
        ledger.set_budget(session, org, "digits", cap, 1e-5, policy=policy, unit="record")
    _charge(engine, org, policy)
    _charge(engine, org, policy)
    raised = _epsilon_after(2) / 0.5

    # Execute: raise the cap (ok), set the first cap again (near_cap, already recorded), raise
    # again, and charge past 80 % of the raised cap with a non-private release (+inf: exhausted).
    with transaction(engine) as session:
        ledger.set_budget(session, org, "digits", raised, 1e-5, policy=policy, unit="record")
        ledger.set_budget(session, org, "digits", cap, 1e-5, policy=policy, unit="record")
        ledger.set_budget(session, org, "digits", raised, 1e-5, policy=policy, unit="record")
    released = _charge(engine, org, policy, NonPrivateEvent(unit="record"))

    # Assert
    assert _alerts(engine, org) == [
        ("near_cap", cap, _alerts(engine, org)[0][2]),
        ("exhausted", raised, released),
        ("near_cap", raised, released),
    ]
    with transaction(engine) as session:
        page = budget_views.list_alerts(session, organization_id=org)
    assert page.total == 3 and page.items[0].epsilon == "inf"
    assert [a.threshold for a in page.items[:2]] == ["exhausted", "near_cap"]


def test_each_crossing_puts_one_hub_event_in_the_outbox_and_a_rolled_back_one_none(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare: a cap equal to the epsilon of three charges; a charge that crosses 80 % rolled back.
    cap = _epsilon_after(3)
    with transaction(engine) as session:
        ledger.set_budget(session, org, "digits", cap, 1e-5, policy=policy, unit="record")
    _charge(engine, org, policy)
    with pytest.raises(RuntimeError), transaction(engine) as session:
        ledger.charge(session, org, "digits", EVENT, policy=policy)
        raise RuntimeError("the round failed before it committed")

    # Execute: the crossing charges, then one more attempt past the cap (refused).
    second = _charge(engine, org, policy)
    third = _charge(engine, org, policy)
    with pytest.raises(BudgetExceededError), transaction(engine) as session:
        ledger.charge(session, org, "digits", EVENT, policy=policy)

    # Assert: one event per crossing, carrying the ledger event that crossed, and nothing personal.
    with transaction(engine) as session:
        rows = session.scalars(
            select(HubOutbox).where(HubOutbox.organization_id == org).order_by(HubOutbox.sequence)
        ).all()
        events = [(r.event_type, r.payload["ledger_event_id"], r.payload["epsilon_cap"]) for r in rows]
        keys = {k for r in rows for k in r.payload}
    assert events == [
        ("accute.privacy.budget.near_cap", second, cap),
        ("accute.privacy.budget.exhausted", third, cap),
    ]
    assert keys == {
        "model_type",
        "privacy_unit",
        "threshold",
        "epsilon_spent",
        "epsilon_cap",
        "delta",
        "ledger_event_id",
    }


def test_a_charge_that_crosses_nothing_writes_no_alert(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    _charge(engine, org, policy)
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(PrivacyBudgetAlert)) == 0


def test_batched_epsilons_equal_one_at_a_time_bit_for_bit() -> None:
    # Prepare: curves of many different ledgers, and deltas of several budgets.
    rng = np.random.default_rng(7)
    events = [
        DpSgdEvent(noise_multiplier=float(z), sample_rate=float(q), steps=int(s))
        for z, q, s in zip(
            rng.uniform(0.5, 3, 40), rng.uniform(0.001, 0.5, 40), rng.integers(1, 5000, 40), strict=True
        )
    ]
    curves = np.stack(
        [accounting.compose(events[: i + 1]) for i in range(len(events))] + [accounting.empty_curve()]
    )
    deltas = np.array([1e-5, 1e-6, 1e-3, 0.5] * 10 + [1e-5])

    # Execute
    batched = accounting.epsilons_from_rdp(curves, deltas)

    # Assert
    single = [accounting.epsilon_from_rdp(c, d) for c, d in zip(curves, deltas, strict=True)]
    assert [float(b).hex() for b in batched] == [s.hex() for s in single]
