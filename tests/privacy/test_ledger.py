"""The ledger and budgets on SQLite and PostgreSQL: charge, refuse, reload, review, audit."""

from __future__ import annotations

import uuid
from decimal import Decimal

import dp_accounting as dpa
import numpy as np
import pytest
import sqlalchemy as sa
from dp_accounting.rdp import RdpAccountant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from privacy import accounting, ledger
from privacy.events import CentralDpEvent, DpEvent, DpSgdEvent
from privacy.ledger import LedgerPolicy
from schema import audit
from schema.db import make_engine, transaction
from schema.errors import BudgetExceededError, ConflictError, InvalidInputError, NotFoundError
from schema.models import FederatedLearningContribution, ImmutableAuditLog, PrivacyBudget, PrivacyLedgerEvent
from tests.privacy.conftest import make_org

MODEL = "workflow_patterns"


def counts(engine: Engine) -> tuple[int, int, int]:
    """Rows of the ledger, the budgets and the audit log: what a refused charge must not change."""
    with engine.connect() as connection:
        return tuple(  # type: ignore[return-value]
            connection.scalar(select(func.count()).select_from(model))
            for model in (PrivacyLedgerEvent, PrivacyBudget, ImmutableAuditLog)
        )


def dp_accounting_epsilon(events: list[DpEvent], delta: float) -> float:
    accountant = RdpAccountant()
    for event in events:
        accountant.compose(
            dpa.SelfComposedDpEvent(
                dpa.PoissonSampledDpEvent(event.sample_rate, dpa.GaussianDpEvent(event.noise_multiplier)),
                event.steps,
            )
        )
    return float(accountant.get_epsilon(delta))


def add_contribution(engine: Engine, org: uuid.UUID, model_type: str = MODEL, round_: int = 1) -> uuid.UUID:
    with transaction(engine) as session:
        row = FederatedLearningContribution(
            organization_id=org,
            model_type=model_type,
            contribution_type="workflow_patterns",
            gradient_checksum="0" * 64,
            contribution_weight=Decimal("1"),
            privacy_budget_consumed=Decimal("0"),
            aggregation_round=round_,
        )
        session.add(row)
        session.flush()
        return row.id


def test_charge_recomputes_epsilon_from_the_events_with_the_accountant(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare
    events: list[DpEvent] = [
        DpSgdEvent(1.1, 0.01, 500),
        CentralDpEvent(1.5, 0.2, 20, clip_norm=1.0),
        DpSgdEvent(2.0, 0.05, 300),
    ]

    # Execute
    results = []
    for round_, event in enumerate(events, start=1):
        with transaction(engine) as session:
            results.append(ledger.charge(session, org, MODEL, event, aggregation_round=round_, policy=policy))

    # Assert: epsilon after each charge is the accountant's over the history of the event's own
    # unit (record-level DP-SGD and tenant-level central DP never mix), not a sum of increments.
    records = [events[0], events[2]]
    assert results[0].epsilon_after == pytest.approx(dp_accounting_epsilon(records[:1], 1e-5), rel=0.01)
    assert results[1].epsilon_after == pytest.approx(dp_accounting_epsilon([events[1]], 1e-5), rel=0.01)
    assert results[2].epsilon_after == pytest.approx(dp_accounting_epsilon(records, 1e-5), rel=0.01)
    assert [r.unit for r in results] == ["record", "tenant", "record"]
    assert results[1].epsilon_before == 0.0
    assert results[2].epsilon_before == results[0].epsilon_after
    assert results[-1].epsilon_after < sum(accounting.epsilon([e], 1e-5) for e in records)
    with transaction(engine) as session:
        assert ledger.spent(session, org, MODEL, policy=policy) == results[-1].epsilon_after
        assert ledger.spent(session, org, MODEL, policy=policy, unit="tenant") == results[1].epsilon_after
        assert [h.epsilon_after for h in ledger.history(session, org, MODEL, policy=policy)] == [
            r.epsilon_after for r in results
        ]
        assert [h.unit for h in ledger.history(session, org, MODEL, policy=policy)] == [
            "record",
            "tenant",
            "record",
        ]


def test_a_ledger_reloaded_after_a_restart_gives_the_same_epsilon(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare: many charges, then the process "restarts": a new engine, empty caches.
    for i in range(40):
        with transaction(engine) as session:
            ledger.charge(
                session, org, MODEL, DpSgdEvent(3.0 + i / 10, 0.01, 50), aggregation_round=i, policy=policy
            )
    with transaction(engine) as session:
        before = ledger.spent(session, org, MODEL, policy=policy)
    url = engine.url.render_as_string(hide_password=False)
    accounting.step_rdp.cache_clear()

    # Execute
    reloaded = make_engine(url)
    try:
        with transaction(reloaded) as session:
            after = ledger.spent(session, org, MODEL, policy=policy)
            budget = session.scalars(select(PrivacyBudget)).one()
            stored = np.frombuffer(budget.rdp_curve or b"", dtype=np.float64)
            replay = ledger.replay_curve(session, org, MODEL)
    finally:
        reloaded.dispose()

    # Assert: the stored curve is bit-identical to a replay of the committed events.
    assert after == before
    assert np.array_equal(stored, replay)
    assert budget.event_count == 40
    assert budget.last_round == 39


def test_a_curve_on_another_order_grid_is_rebuilt_by_replay(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare: two charges, then the stored curve is marked as computed on an older grid and garbled.
    for _ in range(2):
        with transaction(engine) as session:
            ledger.charge(session, org, MODEL, DpSgdEvent(1.0, 0.02, 100), policy=policy)
    with transaction(engine) as session:
        expected = ledger.spent(session, org, MODEL, policy=policy)
        budget = session.scalars(select(PrivacyBudget)).one()
        budget.rdp_orders_key, budget.rdp_curve = "old-grid", bytes(8)

    # Execute
    with transaction(engine) as session:
        spent = ledger.spent(session, org, MODEL, policy=policy)
        result = ledger.charge(session, org, MODEL, DpSgdEvent(1.0, 0.02, 100), policy=policy)

    # Assert
    assert spent == expected
    assert result.epsilon_before == expected
    assert result.epsilon_after == pytest.approx(accounting.mechanism_epsilon(1.0, 0.02, 300, 1e-5))


def test_a_refused_charge_raises_and_writes_nothing(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare: a cap of 1.0, and 0.8 already spent.
    with transaction(engine) as session:
        ledger.set_budget(session, org, MODEL, 1.0, 1e-5, policy=policy)
    z = accounting.noise_multiplier_for(0.8, 0.01, 1000, 1e-5)
    with transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(z, 0.01, 1000), policy=policy)
    before = counts(engine)

    # Execute
    with pytest.raises(BudgetExceededError, match="over its cap 1") as caught, transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(z, 0.01, 1000), policy=policy)

    # Assert
    assert caught.value.exit_code == 4
    assert "\n" not in str(caught.value)
    assert counts(engine) == before
    with transaction(engine) as session:
        assert ledger.spent(session, org, MODEL, policy=policy) <= 1.0


def test_a_refused_first_charge_leaves_no_budget_row_even_if_the_caller_commits(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare
    before = counts(engine)

    # Execute: the caller catches the refusal and commits the rest of its transaction.
    with transaction(engine) as session, pytest.raises(BudgetExceededError):
        ledger.charge(session, org, MODEL, DpSgdEvent(0.5, 1.0, 100), policy=policy)

    # Assert
    assert counts(engine) == before


def test_the_filter_answers_before_the_event_and_changes_nothing(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare
    small, huge = DpSgdEvent(5.0, 0.01, 100), DpSgdEvent(0.5, 1.0, 100)
    before = counts(engine)

    # Execute
    with transaction(engine) as session:
        projection = ledger.project(session, org, MODEL, small, policy=policy)
        refuses_small = ledger.would_exceed(session, org, MODEL, small, policy=policy)
        refuses_huge = ledger.would_exceed(session, org, MODEL, huge, policy=policy)

    with transaction(engine) as session:
        round_of_three = ledger.project(session, org, MODEL, [small] * 3, policy=policy)

    # Assert
    assert round_of_three.epsilon_after == pytest.approx(accounting.mechanism_epsilon(5.0, 0.01, 300, 1e-5))
    assert (refuses_small, refuses_huge) == (False, True)
    assert projection.epsilon_before == 0.0
    assert projection.epsilon_after == pytest.approx(accounting.mechanism_epsilon(5.0, 0.01, 100, 1e-5))
    assert projection.epsilon_cap == 8.0
    assert counts(engine) == before


def test_projecting_many_tenants_equals_projecting_each_in_one_budget_query(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare: one tenant with a cap and spent budget, one never charged, one that does not exist.
    fresh, missing = make_org(engine), uuid.uuid4()
    with transaction(engine) as session:
        ledger.set_budget(session, org, MODEL, 3.0, 1e-6, policy=policy)
        ledger.charge(session, org, MODEL, DpSgdEvent(5.0, 0.01, 100), policy=policy)
    planned = [DpSgdEvent(5.0, 0.01, 100)] * 2
    reads: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        reads.append(statement)

    # Execute
    with transaction(engine) as session:
        each = {o: ledger.project(session, o, MODEL, planned, policy=policy) for o in (org, fresh)}
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            many = ledger.project_many(session, [fresh, str(org)], MODEL, planned, policy=policy)
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        with pytest.raises(NotFoundError, match="does not exist"):
            ledger.project_many(session, [org, missing], MODEL, planned, policy=policy)

    # Assert
    assert many == each
    assert many[org].epsilon_cap == 3.0 and many[org].delta == 1e-6 and many[org].epsilon_before > 0
    assert sum("FROM privacy_budgets" in s for s in reads) == 1


def test_the_contribution_holds_the_increment_and_is_charged_once(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare
    contribution_id = add_contribution(engine, org)
    with transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(1.0, 0.01, 200), policy=policy)

    # Execute
    with transaction(engine) as session:
        result = ledger.charge(
            session,
            org,
            MODEL,
            DpSgdEvent(1.0, 0.01, 200),
            contribution_id=contribution_id,
            aggregation_round=1,
            policy=policy,
        )

    # Assert: the increment (rounded up to 6 places), linked both ways.
    with transaction(engine) as session:
        contribution = session.get(FederatedLearningContribution, contribution_id)
        event = session.get(PrivacyLedgerEvent, result.event_id)
        assert contribution is not None and event is not None
        consumed = contribution.privacy_budget_consumed
    assert event.contribution_id == contribution_id
    assert 0 <= consumed - Decimal(repr(result.increment)) < Decimal("0.000001")
    assert result.increment > 0
    with pytest.raises(ConflictError, match="already charged"), transaction(engine) as session:
        ledger.charge(
            session, org, MODEL, DpSgdEvent(1.0, 0.01, 1), contribution_id=contribution_id, policy=policy
        )


def test_a_contribution_of_another_tenant_or_model_is_refused(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    # Prepare
    other = make_org(engine)
    foreign = add_contribution(engine, other)
    other_model = add_contribution(engine, org, model_type="tax_rules")
    before = counts(engine)

    # Execute / Assert
    with pytest.raises(NotFoundError), transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(1.0, 0.01, 1), contribution_id=foreign, policy=policy)
    with pytest.raises(InvalidInputError, match="tax_rules"), transaction(engine) as session:
        ledger.charge(
            session, org, MODEL, DpSgdEvent(1.0, 0.01, 1), contribution_id=other_model, policy=policy
        )
    assert counts(engine) == before


def test_ledgers_are_per_tenant_and_model_type(engine: Engine, org: uuid.UUID, policy: LedgerPolicy) -> None:
    # Prepare
    other = make_org(engine)

    # Execute
    with transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(1.0, 0.01, 1000), policy=policy)
        ledger.charge(session, org, "tax_rules", DpSgdEvent(2.0, 0.01, 10), policy=policy)

    # Assert
    with transaction(engine) as session:
        assert ledger.spent(session, other, MODEL, policy=policy) == 0.0
        assert ledger.spent(session, org, MODEL, policy=policy) == accounting.mechanism_epsilon(
            1.0, 0.01, 1000, 1e-5
        )
        rows = ledger.budget_rows(session, policy=policy)
        assert [(r.organization_id, r.model_type) for r in rows] == [
            (str(org), "tax_rules"),
            (str(org), MODEL),
        ]
        assert ledger.budget_rows(session, other, policy=policy) == []
        assert ledger.history(session, other, MODEL, policy=policy) == []


def test_budget_status_and_the_platform_default(engine: Engine, org: uuid.UUID) -> None:
    # Prepare: platform default cap 2.0; one model type spends 0.5, one 1.7, one is capped at 0.4 after 0.5.
    policy = LedgerPolicy(default_epsilon_cap=2.0, default_delta=1e-5)
    for model_type, target in (("a", 0.5), ("b", 1.7), ("c", 0.5)):
        z = accounting.noise_multiplier_for(target, 0.01, 1000, 1e-5)
        with transaction(engine) as session:
            ledger.charge(
                session, org, model_type, DpSgdEvent(z, 0.01, 1000), aggregation_round=7, policy=policy
            )
    with transaction(engine) as session:
        ledger.set_budget(session, org, "c", 0.4, 1e-5, policy=policy)

    # Execute
    with transaction(engine) as session:
        rows = {
            r.model_type: r for r in ledger.budget_rows(session, org, policy=policy) if r.unit == "record"
        }

    # Assert
    assert [rows[m].status for m in "abc"] == ["ok", "near_cap", "exhausted"]
    assert rows["a"].epsilon_cap == 2.0
    assert rows["a"].epsilon_remaining == pytest.approx(2.0 - rows["a"].epsilon_spent)
    assert rows["c"].epsilon_remaining == 0.0
    assert (rows["a"].events, rows["a"].last_round) == (1, 7)


def test_set_budget_is_audited_and_validated(engine: Engine, org: uuid.UUID, policy: LedgerPolicy) -> None:
    # Execute
    with transaction(engine) as session:
        statuses = ledger.set_budget(session, org, MODEL, 3.0, 1e-6, policy=policy)
        ledger.charge(session, org, MODEL, DpSgdEvent(1.0, 0.01, 10), policy=policy)

    # Assert: without a unit the cap is set in every unit, each its own ledger.
    assert [s.unit for s in statuses] == ["record", "user", "tenant"]
    for status in statuses:
        assert (status.epsilon_cap, status.delta, status.events, status.status) == (3.0, 1e-6, 0, "ok")
    with transaction(engine) as session:
        actions = [
            r.action
            for r in session.scalars(
                select(ImmutableAuditLog)
                .where(ImmutableAuditLog.organization_id == org)
                .order_by(ImmutableAuditLog.id)
            )
        ]
        assert actions[-2:] == ["privacy_budget.set", "privacy.charged"]
        assert all(r.ok for r in audit.verify(session, org))
    before = counts(engine)
    for args, error in [
        ((org, MODEL, 0.0, 1e-5), InvalidInputError),
        ((org, MODEL, 1.0, 1.0), InvalidInputError),
        ((org, " ", 1.0, 1e-5), InvalidInputError),
        ((uuid.uuid4(), MODEL, 1.0, 1e-5), NotFoundError),
        (("not-a-uuid", MODEL, 1.0, 1e-5), InvalidInputError),
    ]:
        with pytest.raises(error), transaction(engine) as session:
            ledger.set_budget(session, *args, policy=policy)  # type: ignore[arg-type]
    assert counts(engine) == before


def test_bad_charges_are_refused_before_anything_is_written(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy
) -> None:
    before = counts(engine)
    with pytest.raises(NotFoundError), transaction(engine) as session:
        ledger.charge(session, uuid.uuid4(), MODEL, DpSgdEvent(1.0, 0.1, 1), policy=policy)
    with pytest.raises(InvalidInputError, match="aggregation round"), transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(1.0, 0.1, 1), aggregation_round=-1, policy=policy)
    with pytest.raises(InvalidInputError, match="not a DP event"), transaction(engine) as session:
        ledger.charge(session, org, MODEL, (1.0, 0.1, 1), policy=policy)  # type: ignore[arg-type]
    assert counts(engine) == before


def test_prv_ledger_is_at_most_the_rdp_ledger(engine: Engine, org: uuid.UUID) -> None:
    # Prepare
    rdp, prv = LedgerPolicy(accountant="rdp"), LedgerPolicy(accountant="prv")

    # Execute
    with transaction(engine) as session:
        charged = ledger.charge(session, org, MODEL, DpSgdEvent(1.1, 0.01, 1000), policy=prv)
        ledger.charge(session, org, MODEL, DpSgdEvent(1.1, 0.01, 1000), policy=prv)
        by_prv = ledger.spent(session, org, MODEL, policy=prv)
        by_rdp = ledger.spent(session, org, MODEL, policy=rdp)

    # Assert
    assert charged.accountant == "prv"
    assert by_prv == pytest.approx(accounting.mechanism_epsilon(1.1, 0.01, 2000, 1e-5, "prv"))
    assert by_prv < by_rdp


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cap=st.floats(min_value=0.2, max_value=10.0),
    requests=st.lists(
        st.tuples(
            st.floats(min_value=0.5, max_value=8.0),
            st.floats(min_value=1e-4, max_value=1.0),
            st.integers(min_value=0, max_value=5000),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_committed_epsilon_never_exceeds_the_cap(
    engine: Engine, org: uuid.UUID, policy: LedgerPolicy, cap: float, requests: list[tuple[float, float, int]]
) -> None:
    # Prepare: a fresh model type per example, capped at `cap`.
    model_type = f"m-{uuid.uuid4().hex[:8]}"
    with transaction(engine) as session:
        ledger.set_budget(session, org, model_type, cap, 1e-5, policy=policy)

    # Execute: every requested event, charged or refused.
    accepted: list[DpEvent] = []
    for z, q, steps in requests:
        event = DpSgdEvent(z, q, steps)
        try:
            with transaction(engine) as session:
                ledger.charge(session, org, model_type, event, policy=policy)
            accepted.append(event)
        except BudgetExceededError:
            pass

    # Assert: the committed events are exactly the accepted ones, and their epsilon is within the cap.
    with transaction(engine) as session:
        history = ledger.history(session, org, model_type, policy=policy)
        committed = ledger.spent(session, org, model_type, policy=policy)
    assert [(h.noise_multiplier, h.sample_rate, h.steps) for h in history] == [
        (e.noise_multiplier, e.sample_rate, e.steps) for e in accepted
    ]
    assert committed == accounting.epsilon(accepted, 1e-5)
    assert committed <= cap


def test_history_and_spent_of_an_unknown_organization_are_not_found(
    engine: Engine, policy: LedgerPolicy
) -> None:
    with pytest.raises(NotFoundError), transaction(engine) as session:
        ledger.history(session, uuid.uuid4(), MODEL, policy=policy)
    with pytest.raises(NotFoundError), transaction(engine) as session:
        ledger.budget_rows(session, uuid.uuid4(), policy=policy)


def test_ledger_rows_obey_their_constraints(engine: Engine, org: uuid.UUID) -> None:
    # A row written around the ledger still cannot hold an impossible event.
    base = {
        "organization_id": org,
        "model_type": MODEL,
        "mechanism": "dp_sgd",
        "noise_multiplier": 1.0,
        "sample_rate": 0.1,
        "steps": 1,
    }
    for change in (
        {"sample_rate": 1.5},
        {"noise_multiplier": 0.0},
        {"steps": -1},
        {"mechanism": "gdp"},
        {"mechanism": "central_gaussian"},
        {"clip_norm": 1.0},
    ):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(sa.insert(PrivacyLedgerEvent).values(**{**base, **change}))
