"""Deadline budget and bulkheads: a hanging tenant provider neither eats the fallback's time nor
the connections of other tenants."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.service import create_app
from schema import directory
from schema.db import transaction
from schema.models import LlmUsageLog
from tests.orchestrator.conftest import Service, make_settings
from tests.orchestrator.fakes import FakeProvider, running_app


def test_a_hanging_provider_leaves_the_fallback_its_reserve(
    service_factory: Callable[..., Service], provider_factory: Callable[..., FakeProvider]
) -> None:
    # Prepare: attempts may take 2.5 s and 3 retries, but the whole request has 3 s.
    hanging = provider_factory(delay_s=8)
    service = service_factory(cascade_deadline_s=3.0, provider_timeout_s=2.5, retry_max_attempts=3)
    org = service.org()
    service.add_config(org, provider="custom", api_endpoint=hanging.url)

    # Execute
    started = time.monotonic()
    response = service.chat(org)
    elapsed = time.monotonic() - started

    # Assert: the tenant tier stopped at deadline - reserve; the fallback answered in time.
    assert response.status_code == 200, response.text
    assert response.json()["is_fallback"] is True
    assert elapsed < 3.5
    with transaction(service.engine) as session:
        codes = session.scalars(
            sa.select(LlmUsageLog.error_code).where(
                LlmUsageLog.organization_id == org, LlmUsageLog.is_fallback.is_(False)
            )
        ).all()
    assert codes == ["timeout"]


def _org(engine: Engine) -> uuid.UUID:
    with transaction(engine) as session:
        return directory.create_organization(session, f"firm-{uuid.uuid4().hex[:8]}", "pay_as_you_go").id


def test_one_tenants_flood_does_not_delay_other_tenants(
    engine: Engine, tmp_path: Path, fallback: FakeProvider, provider_factory: Callable[..., FakeProvider]
) -> None:
    # Prepare: small pools so that a flood of 40 would fill them all without bulkheads.
    hanging = provider_factory(delay_s=4)
    healthy = provider_factory(reply="healthy")
    settings = make_settings(
        tmp_path,
        fallback.url,
        provider_timeout_s=2.0,
        cascade_deadline_s=6.0,
        retry_max_attempts=1,
        upstream_max_connections=8,
        upstream_max_per_origin=4,
        upstream_reserved_fallback=4,
        org_max_concurrency=4,
    )
    app = create_app(settings, engine)
    tokens = app.state.services.tokens
    flooder, quiet, other = _org(engine), _org(engine), _org(engine)

    def auth(org: uuid.UUID, role: str = "org_user") -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.issue(role=role, organization_id=org)}"}

    async def run(base: str) -> tuple[float, float, list[int]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            for org, url in ((flooder, hanging.url), (other, healthy.url)):
                created = await client.post(
                    f"/v1/orgs/{org}/llm-configs",
                    json={"provider": "custom", "display_name": "x", "model_id": "m", "api_endpoint": url},
                    headers=auth(org, "org_admin"),
                )
                assert created.status_code == 201

            async def chat(org: uuid.UUID, i: int) -> httpx.Response:
                return await client.post(
                    f"/v1/orgs/{org}/agents/luca/chat", json={"message": f"q {i}"}, headers=auth(org)
                )

            flood = [asyncio.create_task(chat(flooder, i)) for i in range(40)]
            await asyncio.sleep(0.5)  # the flood now holds what it can

            async def timed(org: uuid.UUID) -> float:
                started = time.monotonic()
                response = await chat(org, 0)
                assert response.status_code == 200, response.text
                return time.monotonic() - started

            quiet_s, other_s = await asyncio.gather(timed(quiet), timed(other))
            statuses = [r.status_code for r in await asyncio.gather(*flood)]
            return quiet_s, other_s, statuses

    # Execute
    with running_app(app) as base:
        quiet_s, other_s, statuses = asyncio.run(run(base))

    # Assert: the other tenants were served at once; the flood was served too (by the fallback).
    assert quiet_s < 1.0, f"fallback-only tenant waited {quiet_s:.2f}s"
    assert other_s < 1.0, f"tenant with its own provider waited {other_s:.2f}s"
    assert len(hanging.received) <= 40
    assert set(statuses) <= {200, 502, 504}
