"""``accute.llm.fallback.billed``: billed fallback usage reaches the hub aggregated, never one event a
request, in the accounting transaction, with the billing row's cumulative figures."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select

from orchestrator import accounting
from orchestrator.billing_events import FallbackBilledReporter
from schema import directory
from schema.config import Settings
from schema.db import transaction
from schema.models import FallbackBilling, HubOutbox
from tests.orchestrator.conftest import Service

MINI_PRICES = {"default": {"input": 0.5, "output": 1.5}}


def _billed(engine: Engine, org: uuid.UUID) -> list[HubOutbox]:
    with transaction(engine) as session:
        rows = list(
            session.scalars(
                select(HubOutbox)
                .where(HubOutbox.organization_id == org, HubOutbox.event_type == "accute.llm.fallback.billed")
                .order_by(HubOutbox.sequence)
            )
        )
        session.expunge_all()
    return rows


def _row(engine: Engine, org: uuid.UUID) -> FallbackBilling:
    with transaction(engine) as session:
        row = session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).one()
        session.expunge(row)
    return row


def test_many_fallback_requests_make_one_event_per_interval(service_factory: Callable[..., Service]) -> None:
    # Prepare: the default interval (300 s) is far longer than the test.
    service = service_factory(price_table=MINI_PRICES)
    org = service.org()

    # Execute
    for i in range(20):
        assert service.chat(org, f"question {i}").status_code == 200

    # Assert: one event, for the first charge; the billing row itself has all twenty.
    (event,) = _billed(service.engine, org)
    assert event.payload["total_fallback_requests"] == 1
    row = _row(service.engine, org)
    assert row.total_fallback_requests == 20
    assert event.payload["billing_id"] == str(row.id)
    assert event.payload["billing_period_start"] == row.billing_period_start.isoformat()


def test_with_no_interval_the_last_event_carries_the_final_figures(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory(price_table=MINI_PRICES, hub_fallback_billed_interval_s=0)
    org = service.org()

    for i in range(5):
        assert service.chat(org, f"question {i}").status_code == 200

    events = _billed(service.engine, org)
    row = _row(service.engine, org)
    assert 1 <= len(events) <= 5  # at most one per accounting batch that charged the organization
    final = events[-1].payload
    assert final["total_fallback_requests"] == row.total_fallback_requests == 5
    assert final["total_fallback_tokens"] == row.total_fallback_tokens
    assert Decimal(final["total_cost_usd"]) == Decimal(str(row.total_cost_usd))
    assert set(final) == {
        "billing_id",
        "billing_period_start",
        "billing_period_end",
        "billing_model",
        "total_fallback_requests",
        "total_fallback_tokens",
        "total_cost_usd",
    }


def _outcome(org: uuid.UUID, request_id: str, cost: Decimal | None = Decimal("0.001")) -> accounting.Outcome:
    return accounting.Outcome(
        organization_id=org,
        request_id=request_id,
        agent_slug="cadence",
        session_id=None,
        user_id=None,
        status="success",
        response={"answer": "x"},
        usage=[],
        vamn=[],
        billed_tokens=10,
        billed_cost=cost,
    )


def test_a_throttled_charge_is_reported_by_the_first_batch_after_the_interval(engine: Engine) -> None:
    # Prepare: a reporter on a clock the test moves.
    now = [1000.0]
    reporter = FallbackBilledReporter(clock=lambda: now[0])
    settings = Settings(hub_fallback_billed_interval_s=60)
    with transaction(engine) as session:
        org = directory.create_organization(session, "billed firm").id
        other = directory.create_organization(session, "other firm").id

    def batch(outcomes: list[accounting.Outcome]) -> list[int]:
        with engine.connect() as connection, connection.begin():
            accounting.record_batch(connection, settings, outcomes, reporter)
        return [e.payload["total_fallback_requests"] for e in _billed(engine, org)]

    # Execute / Assert: the first charge reports, the second (10 s later) waits ...
    assert batch([_outcome(org, "r1")]) == [1]
    now[0] += 10
    assert batch([_outcome(org, "r2")]) == [1]
    # ... and goes out with the first batch after the interval, even one of another tenant's
    # requests (no fallback charge: that tenant gets no event).
    now[0] += 55
    assert batch([_outcome(other, "o1", cost=None)]) == [1, 2]
    assert _billed(engine, other) == []


def test_a_rolled_back_batch_leaves_no_billing_event(engine: Engine) -> None:
    settings = Settings(hub_fallback_billed_interval_s=0)
    with transaction(engine) as session:
        org = directory.create_organization(session, "rolled back firm").id

    with pytest.raises(RuntimeError), engine.connect() as connection, connection.begin():
        accounting.record_batch(connection, settings, [_outcome(org, "r1")])
        assert len(_billed_in(connection, org)) == 1  # written in the batch's transaction ...
        raise RuntimeError("the batch fails before it commits")

    assert _billed(engine, org) == []  # ... and gone with it


def _billed_in(connection: object, org: uuid.UUID) -> list[object]:
    from sqlalchemy import Connection

    assert isinstance(connection, Connection)
    return list(
        connection.execute(
            select(HubOutbox.event_id).where(
                HubOutbox.organization_id == org, HubOutbox.event_type == "accute.llm.fallback.billed"
            )
        )
    )
