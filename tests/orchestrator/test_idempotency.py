"""Request ids: scoped to (organization, caller, request id) with a hash of the request, single flight."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.service import create_app
from schema import directory
from schema.db import transaction
from schema.models import FallbackBilling, LlmRequest
from tests.orchestrator.conftest import Service, make_settings
from tests.orchestrator.fakes import FakeProvider, running_app


def _headers(service: Service, org: uuid.UUID, subject: str) -> dict[str, str]:
    token = service.services.tokens.issue(role="org_user", organization_id=org, subject=subject)
    return {"Authorization": f"Bearer {token}"}


def test_another_user_reusing_a_request_id_gets_their_own_answer(
    service: Service, provider_factory: Callable[..., FakeProvider]
) -> None:
    # Prepare
    provider = provider_factory(reply="answer")
    org = service.org()
    service.add_config(org, provider="custom", api_endpoint=provider.url)
    url = f"/v1/orgs/{org}/agents/luca/chat"

    # Execute
    alice = service.client.post(
        url,
        json={"message": "alice's secret question", "request_id": "r-1"},
        headers=_headers(service, org, "alice"),
    )
    bob = service.client.post(
        url, json={"message": "bob asks", "request_id": "r-1"}, headers=_headers(service, org, "bob")
    )

    # Assert: both were answered by the provider; bob did not get alice's stored answer.
    assert alice.status_code == bob.status_code == 200
    assert [r.body["messages"][0]["content"] for r in provider.received] == [
        "alice's secret question",
        "bob asks",
    ]
    with transaction(service.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(LlmRequest)) == 2


def test_the_same_id_for_a_different_request_is_a_conflict(
    service: Service, provider_factory: Callable[..., FakeProvider]
) -> None:
    provider = provider_factory()
    org = service.org()
    service.add_config(org, provider="custom", api_endpoint=provider.url)
    url = f"/v1/orgs/{org}/agents/luca/chat"
    headers = _headers(service, org, "alice")

    first = service.client.post(url, json={"message": "one", "request_id": "r-2"}, headers=headers)
    again = service.client.post(url, json={"message": "one", "request_id": "r-2"}, headers=headers)
    changed = service.client.post(url, json={"message": "two", "request_id": "r-2"}, headers=headers)
    options = service.client.post(
        url, json={"message": "one", "request_id": "r-2", "max_tokens": 5}, headers=headers
    )

    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert changed.status_code == options.status_code == 409
    assert "different request" in changed.json()["message"]
    assert len(provider.received) == 1


def test_concurrent_copies_of_a_request_call_the_provider_once(
    engine: Engine, tmp_path: Path, fallback: FakeProvider, provider_factory: Callable[..., FakeProvider]
) -> None:
    # Prepare: a slow tenant provider and 40 copies of one request sent at once.
    provider = provider_factory(reply="once", delay_s=0.5)
    app = create_app(make_settings(tmp_path, fallback.url), engine)
    services = app.state.services
    with transaction(engine) as session:
        org = directory.create_organization(session, f"firm-{uuid.uuid4().hex[:8]}", "pay_as_you_go").id
    admin = {"Authorization": f"Bearer {services.tokens.issue(role='org_admin', organization_id=org)}"}
    user = {"Authorization": f"Bearer {services.tokens.issue(role='org_user', organization_id=org)}"}

    async def run(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            created = await client.post(
                f"/v1/orgs/{org}/llm-configs",
                json={
                    "provider": "custom",
                    "display_name": "x",
                    "model_id": "m",
                    "api_endpoint": provider.url,
                },
                headers=admin,
            )
            assert created.status_code == 201
            body = {"message": "the same question", "request_id": "dup-1"}
            return await asyncio.gather(
                *[client.post(f"/v1/orgs/{org}/agents/luca/chat", json=body, headers=user) for _ in range(40)]
            )

    # Execute
    with running_app(app) as base:
        responses = asyncio.run(run(base))

    # Assert
    assert [r.status_code for r in responses] == [200] * 40
    assert {r.json()["content"] for r in responses} == {"once"}
    assert len(provider.received) == 1
    with transaction(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(LlmRequest)) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(FallbackBilling)) == 0
