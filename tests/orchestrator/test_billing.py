"""Billing exactness under concurrency, billing models, and the per-organization response cache."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from orchestrator import accounting
from orchestrator.service import create_app
from schema import directory
from schema.db import transaction
from schema.models import FallbackBilling, LlmRequest, LlmUsageLog
from tests.conftest import IN_CI
from tests.orchestrator.conftest import Service, make_settings
from tests.orchestrator.fakes import FakeProvider, running_app

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _fire(base: str, org: uuid.UUID, token: str, count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120, trust_env=False) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"/v1/orgs/{org}/agents/cadence/chat",
                    json={"message": f"question {i}"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                for i in range(count)
            )
        )
    return [r.status_code for r in responses]


def _concurrent_fallback_requests(
    engine: Engine, tmp_path: Path, fallback: FakeProvider, count: int
) -> uuid.UUID:
    app = create_app(make_settings(tmp_path, fallback.url), engine)
    with transaction(engine) as session:
        org = directory.create_organization(session, "busy firm").id
    token = app.state.services.tokens.issue(role="org_user", organization_id=org)
    with running_app(app) as base:
        statuses = asyncio.run(_fire(base, org, token, count))
    assert statuses == [200] * count
    return org


@pytest.mark.postgres
@pytest.mark.slow
def test_billing_totals_are_exact_after_500_concurrent_fallback_requests(
    pg_engine: Engine, tmp_path: Path, fallback: FakeProvider
) -> None:
    # Execute
    org = _concurrent_fallback_requests(pg_engine, tmp_path, fallback, 500)

    # Assert: every request billed once: 30 tokens and 0.0007 USD each.
    with transaction(pg_engine) as session:
        bill = session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).one()
        usage = session.scalar(
            select(func.count()).select_from(LlmUsageLog).where(LlmUsageLog.is_fallback.is_(True))
        )
        cost = session.scalar(select(func.sum(LlmUsageLog.estimated_cost_usd)))
    assert (bill.total_fallback_requests, bill.total_fallback_tokens) == (500, 15_000)
    assert bill.total_cost_usd == Decimal("0.3500") == cost
    assert usage == 500 and len(fallback.received) == 500


def test_billing_totals_are_exact_under_concurrency(
    engine: Engine, tmp_path: Path, fallback: FakeProvider
) -> None:
    # Execute
    org = _concurrent_fallback_requests(engine, tmp_path, fallback, 40)

    # Assert
    with transaction(engine) as session:
        bill = session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).one()
    assert (bill.total_fallback_requests, bill.total_fallback_tokens, bill.total_cost_usd) == (
        40,
        1200,
        Decimal("0.0280"),
    )


def test_token_bundle_draws_down_then_bills_the_overage(
    service_factory: Callable[..., Service], fallback: FakeProvider
) -> None:
    # Prepare: a 50-token bundle; each call uses 30 tokens and lists at 0.0007 USD.
    service = service_factory(token_bundle_tokens=50)
    org = service.org(billing_model="token_bundle")

    # Execute
    remaining, costs = [], []
    for _ in range(3):
        service.chat(org)
        with transaction(service.engine) as session:
            bill = session.scalars(
                select(FallbackBilling).where(FallbackBilling.organization_id == org)
            ).one()
            remaining.append(bill.bundle_tokens_remaining)
            costs.append(bill.total_cost_usd)

    # Assert: 50 → 20 (free), → 0 (10 of 30 tokens over: a third of the price), → 0 (full price).
    assert remaining == [20, 0, 0]
    assert costs == [Decimal("0"), Decimal("0.0002"), Decimal("0.0009")]


def test_unlimited_tier_counts_tokens_but_charges_nothing(service: Service, fallback: FakeProvider) -> None:
    # Prepare
    org = service.org(billing_model="unlimited_tier")

    # Execute
    service.chat(org)
    service.chat(org)

    # Assert
    with transaction(service.engine) as session:
        bill = session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).one()
    assert (bill.total_fallback_requests, bill.total_fallback_tokens, bill.total_cost_usd) == (
        2,
        60,
        Decimal("0"),
    )


def _cache_checks(service: Service, fallback: FakeProvider) -> tuple[uuid.UUID, uuid.UUID]:
    a, b = service.org(), service.org()

    first = service.chat(a, message="What   is the VAT rate?").json()
    hit = service.chat(a, message="What is the VAT rate?").json()
    other_tenant = service.chat(b, message="What is the VAT rate?").json()

    assert first["cache_hit"] is False and hit["cache_hit"] is True and other_tenant["cache_hit"] is False
    assert hit["content"] == first["content"] and (hit["input_tokens"], hit["output_tokens"]) == (0, 0)
    assert len(fallback.received) == 2  # a's miss and b's miss; a's hit never reached the provider
    with transaction(service.engine) as session:
        bill = session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == a)).one()
        hits = session.scalars(
            select(LlmUsageLog).where(LlmUsageLog.organization_id == a, LlmUsageLog.cache_hit.is_(True))
        ).all()
        requests = session.scalar(
            select(func.count()).select_from(LlmRequest).where(LlmRequest.organization_id == a)
        )
    assert bill.total_fallback_requests == 1 and bill.total_cost_usd == Decimal("0.0007")
    assert [(h.is_fallback, h.input_tokens, h.estimated_cost_usd) for h in hits] == [(False, 0, None)]
    assert requests == 2
    return a, b


def test_lru_cache_hits_are_logged_not_billed_and_never_cross_tenants(
    service_factory: Callable[..., Service], fallback: FakeProvider
) -> None:
    _cache_checks(service_factory(cache_enabled=True), fallback)


def test_redis_cache_hits_are_logged_not_billed_and_never_cross_tenants(
    service_factory: Callable[..., Service], fallback: FakeProvider
) -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis at {REDIS_URL} is unreachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    service = service_factory(cache_enabled=True, redis_url=REDIS_URL)
    a, b = _cache_checks(service, fallback)
    client = redis.Redis.from_url(REDIS_URL)
    assert len(client.keys(f"accute:cache:{a}:*")) == 1 and len(client.keys(f"accute:cache:{b}:*")) == 1


#: gpt-4o-mini's list prices: one fallback call (10 in, 20 out) costs $0.0000135.
MINI_PRICES = {"fallback-model": {"input": 0.15, "output": 0.60}}


def test_cheap_requests_add_up_exactly_and_round_once_per_invoice_line(
    service_factory: Callable[..., Service],
) -> None:
    # Prepare
    service = service_factory(price_table=MINI_PRICES)
    org = service.org()

    # Execute
    costs = [service.chat(org, f"question {i}").json()["estimated_cost"] for i in range(100)]
    billing = service.client.get(f"/v1/orgs/{org}/billing", headers=service.headers(org)).json()

    # Assert: 100 x 0.0000135 = 0.00135 exactly, rounded once (half up) to 0.0014; not 100 x 0.0000.
    assert costs == [0.0000135] * 100
    assert billing[0]["total_fallback_requests"] == 100
    assert Decimal(billing[0]["total_cost_exact_usd"]) == Decimal("0.00135")
    assert billing[0]["total_cost_usd"] == "0.0014"
    with transaction(service.engine) as session:
        row = session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).one()
        assert Decimal(str(row.total_cost_usd)) == Decimal("0.0014")


@given(
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.decimals(min_value=0, max_value=100, places=4),
    st.decimals(min_value=0, max_value=100, places=4),
)
def test_price_is_exact_and_additive(
    in_a: int, out_a: int, in_b: int, out_b: int, price_in: Decimal, price_out: Decimal
) -> None:
    settings = make_settings(
        Path("/nonexistent"), None, price_table={"m": {"input": float(price_in), "output": float(price_out)}}
    )
    whole = accounting.price(settings, "m", in_a + in_b, out_a + out_b)
    parts = accounting.price(settings, "m", in_a, out_a) + accounting.price(settings, "m", in_b, out_b)
    assert whole == parts
    assert (
        whole
        == (
            Decimal(in_a + in_b) * Decimal(str(float(price_in)))
            + Decimal(out_a + out_b) * Decimal(str(float(price_out)))
        )
        / 10**6
    )
