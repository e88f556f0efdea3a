"""Units of privacy, non-private releases, the lock and the ledger's invariant (issue 11), both backends."""

from __future__ import annotations

import math
import uuid

import dp_accounting as dpa
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, select

from privacy import accounting, ledger
from privacy.events import CentralDpEvent, DpEvent, DpSgdEvent, NonPrivateEvent
from privacy.ledger import LedgerPolicy
from schema.db import transaction
from schema.errors import BudgetExceededError, InvalidInputError
from schema.models import ImmutableAuditLog, PrivacyLedgerEvent
from tests.privacy.conftest import make_org

MODEL = "tax_rules"


def rdp_epsilon(events: list[DpEvent], delta: float) -> float:
    """dp-accounting's RDP over the same events (an accountant we did not write)."""
    accountant = RdpAccountant()
    for event in events:
        accountant.compose(
            dpa.SelfComposedDpEvent(
                dpa.PoissonSampledDpEvent(event.sample_rate, dpa.GaussianDpEvent(event.noise_multiplier)),
                event.steps,
            )
        )
    return float(accountant.get_epsilon(delta))


def test_units_keep_separate_ledgers_and_caps(engine: Engine, org: uuid.UUID, policy: LedgerPolicy) -> None:
    # Prepare: a tight user-level cap, the default elsewhere.
    user_event = DpSgdEvent(1.0, 0.05, 200, unit="user")
    with transaction(engine) as session:
        ledger.set_budget(
            session, org, MODEL, rdp_epsilon([user_event], 1e-5) * 1.01, 1e-5, policy=policy, unit="user"
        )

    # Execute
    with transaction(engine) as session:
        record = ledger.charge(session, org, MODEL, DpSgdEvent(1.0, 0.05, 200), policy=policy)
        user = ledger.charge(session, org, MODEL, user_event, policy=policy)
        central = ledger.charge(session, org, MODEL, CentralDpEvent(2.0, 0.5, 3, 1.0), policy=policy)
    with pytest.raises(BudgetExceededError, match="user level"), transaction(engine) as session:
        ledger.charge(session, org, MODEL, user_event, policy=policy)

    # Assert: each unit's epsilon is its own events' alone.
    assert (record.unit, user.unit, central.unit) == ("record", "user", "tenant")
    assert record.epsilon_before == user.epsilon_before == central.epsilon_before == 0.0
    assert user.epsilon_after == pytest.approx(rdp_epsilon([user_event], 1e-5), rel=1e-6)
    with transaction(engine) as session:
        rows = {r.unit: r for r in ledger.budget_rows(session, org, policy=policy)}
        units = list(session.scalars(select(PrivacyLedgerEvent.unit).order_by(PrivacyLedgerEvent.id)))
    assert units == ["record", "user", "tenant"]
    assert {u: r.events for u, r in rows.items()} == {"record": 1, "user": 1, "tenant": 1}
    assert rows["tenant"].epsilon_spent == pytest.approx(central.epsilon_after)


def test_projecting_events_of_two_units_at_once_is_refused(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    with pytest.raises(InvalidInputError, match="cannot share one epsilon"), transaction(engine) as session:
        ledger.project(
            session, org, MODEL, [DpSgdEvent(1.0, 0.1, 10), CentralDpEvent(1.0, 0.1, 1, 1.0)], policy=policy
        )


def test_a_non_private_release_is_recorded_over_any_cap_and_exhausts_the_unit(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare
    with transaction(engine) as session:
        ledger.set_budget(session, org, MODEL, 1.0, 1e-5, policy=policy, unit="record")

    # Execute
    with transaction(engine) as session:
        charged = ledger.charge(
            session, org, MODEL, NonPrivateEvent("record"), aggregation_round=1, policy=policy
        )
    with pytest.raises(BudgetExceededError), transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(50.0, 0.001, 1), policy=policy)

    # Assert: +inf, exhausted, audited as "inf"; other units untouched.
    assert math.isinf(charged.epsilon_after)
    with transaction(engine) as session:
        (row,) = [r for r in ledger.budget_rows(session, org, policy=policy) if r.unit == "record"]
        assert math.isinf(row.epsilon_spent) and row.status == "exhausted" and row.epsilon_remaining == 0.0
        assert ledger.spent(session, org, MODEL, policy=policy, unit="user") == 0.0
        entry = session.scalars(
            select(ImmutableAuditLog).where(
                ImmutableAuditLog.organization_id == org, ImmutableAuditLog.action == "privacy.charged"
            )
        ).one()
        assert entry.action_data["epsilon_after"] == "inf" and entry.action_data["mechanism"] == "non_private"
        history = ledger.history(session, org, MODEL, policy=policy)
    assert [h.mechanism for h in history] == ["non_private"] and math.isinf(history[0].epsilon_after)


def test_non_private_epsilon_is_infinite_under_both_accountants() -> None:
    events = [DpSgdEvent(2.0, 0.01, 10), NonPrivateEvent("record")]
    assert math.isinf(accounting.epsilon(events, 1e-5, "rdp"))
    assert math.isinf(accounting.epsilon(events, 1e-5, "prv"))


def test_prv_outside_its_range_falls_back_to_rdp_and_stays_above_pld() -> None:
    # z = 0.5, q = 1, 1000 steps: epsilon in the thousands, where Opacus' PRV exponentiates past
    # float range. The answer must be a valid upper bound: at least dp-accounting's PLD value.
    event = DpSgdEvent(0.5, 1.0, 1000)
    pld = dpa.pld.PLDAccountant()
    pld.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(1.0, dpa.GaussianDpEvent(0.5)), 1000))

    prv = accounting.epsilon([event], 1e-5, "prv")

    assert prv == accounting.epsilon([event], 1e-5, "rdp")
    assert prv >= pld.get_epsilon(1e-5)


@pytest.mark.parametrize(("z", "q", "steps"), [(0.3, 0.1, 1000), (0.5, 0.2, 2000), (0.4, 0.5, 200)])
def test_prv_near_the_range_limit_is_never_below_pld(z: float, q: float, steps: int) -> None:
    pld = dpa.pld.PLDAccountant()
    pld.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps))
    prv = accounting.epsilon([DpSgdEvent(z, q, steps)], 1e-5, "prv")
    assert pld.get_epsilon(1e-5) <= prv <= accounting.epsilon([DpSgdEvent(z, q, steps)], 1e-5, "rdp")


def test_prv_charge_finds_its_epsilon_computed_before_the_lock(engine: Engine, org: uuid.UUID) -> None:
    # Prepare: a history, then the filter's projection (no lock) of the next event.
    prv = LedgerPolicy(accountant="prv")
    event = DpSgdEvent(1.3, 0.02, 300 + uuid.uuid4().int % 1000)  # steps unseen by the memo
    with transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(1.1, 0.01, 500), policy=prv)
    with transaction(engine) as session:
        projected = ledger.project(session, org, MODEL, event, policy=prv)
    misses = accounting._prv_epsilon.cache_info().misses

    # Execute: the charge (which takes the row lock).
    with transaction(engine) as session:
        charged = ledger.charge(session, org, MODEL, event, policy=prv)

    # Assert: no PRV computation ran for it, and the value is the projection's.
    assert accounting._prv_epsilon.cache_info().misses == misses
    assert charged.epsilon_after == projected.epsilon_after


# --- the ledger's invariant, as a state machine -------------------------------------------------


class DispatchMachine(RuleBasedStateMachine):
    """Dispatches (charge, then send), replies, timeouts, refusals, crashes and resumes.

    A release (an update reaching the server) can only follow a committed dispatch; a crash in
    the dispatch transaction rolls its charge back and nothing is sent. Invariant: per tenant, the
    ledger's epsilon is at least dp-accounting's epsilon of everything released, and never above
    the cap.
    """

    engine: Engine
    cap = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.policy = LedgerPolicy(default_epsilon_cap=self.cap, default_delta=1e-5)
        self.orgs = [make_org(self.engine) for _ in range(2)]
        self.in_flight: list[tuple[uuid.UUID, DpEvent]] = []
        self.released: dict[uuid.UUID, list[DpEvent]] = {org: [] for org in self.orgs}

    @rule(
        tenant=st.integers(0, 1),
        z=st.floats(0.8, 4.0),
        q=st.floats(0.01, 0.5),
        steps=st.integers(1, 60),
        crash_inside=st.booleans(),
    )
    def dispatch(self, tenant: int, z: float, q: float, steps: int, crash_inside: bool) -> None:
        org, event = self.orgs[tenant], DpSgdEvent(z, q, steps)
        try:
            with transaction(self.engine) as session:
                ledger.charge(session, org, MODEL, event, policy=self.policy)
                if crash_inside:
                    raise KeyboardInterrupt("server died before the dispatch committed")
        except BudgetExceededError:
            return  # not instructed
        except KeyboardInterrupt:
            return  # rolled back: nothing charged, nothing sent
        self.in_flight.append((org, event))

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 100))
    def reply(self, index: int) -> None:
        org, event = self.in_flight.pop(index % len(self.in_flight))
        self.released[org].append(event)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 100))
    def timeout_or_refusal(self, index: int) -> None:
        self.in_flight.pop(index % len(self.in_flight))  # charged, nothing released

    @rule()
    def crash_and_resume(self) -> None:
        # Worst case: every in-flight node trained and its update arrived before the crash.
        for org, event in self.in_flight:
            self.released[org].append(event)
        self.in_flight.clear()

    @invariant()
    def recorded_covers_released_and_stays_under_cap(self) -> None:
        with transaction(self.engine) as session:
            for org in self.orgs:
                recorded = ledger.spent(session, org, MODEL, policy=self.policy)
                released = rdp_epsilon(self.released[org], 1e-5) if self.released[org] else 0.0
                assert recorded >= released * (1 - 1e-9)
                assert recorded <= self.cap


def test_recorded_epsilon_covers_every_release_and_never_passes_the_cap(engine: Engine) -> None:
    DispatchMachine.engine = engine
    run_state_machine_as_test(
        DispatchMachine,
        settings=settings(
            max_examples=12,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
