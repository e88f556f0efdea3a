"""The HTTP edge: auth and scoping, provider configs, secrets, bad input, idempotency, health."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import pytest
import sqlalchemy as sa
from sqlalchemy import select

from orchestrator.service import create_app
from schema import directory
from schema.db import transaction
from schema.models import FallbackBilling, LlmRequest, LlmUsageLog
from tests.orchestrator.conftest import FALLBACK_KEY, Service, make_settings
from tests.orchestrator.fakes import FakeProvider, running_app


def test_health_and_readiness(service: Service) -> None:
    # Execute
    health = service.client.get("/healthz")
    ready = service.client.get("/readyz")
    schema = service.client.get("/openapi.json")

    # Assert
    assert health.json() == {"status": "ok"} and ready.json() == {"status": "ready"}
    assert "/v1/orgs/{org}/agents/{agent_slug}/chat" in schema.json()["paths"]


def test_missing_bad_and_expired_tokens_get_a_bare_401(service: Service) -> None:
    # Prepare
    org = service.org()
    expired = service.token(org, ttl_s=1)
    claims = jwt.decode(expired, options={"verify_signature": False})
    forged = jwt.encode({**claims, "exp": claims["exp"] + 3600}, "not-the-key", algorithm="HS256")
    url = f"/v1/orgs/{org}/llm-configs"

    # Execute
    time.sleep(1.1)
    responses = [
        service.client.get(url),
        service.client.get(url, headers={"Authorization": "Bearer not-a-token"}),
        service.client.get(url, headers={"Authorization": f"Bearer {expired}"}),
        service.client.get(url, headers={"Authorization": f"Bearer {forged}"}),
    ]

    # Assert
    assert [r.status_code for r in responses] == [401] * 4
    assert all(r.json() == {"error": "unauthenticated"} for r in responses)


def test_organization_in_path_must_match_the_token(service: Service) -> None:
    # Prepare
    mine, theirs = service.org(), service.org()

    # Execute
    configs = service.client.get(f"/v1/orgs/{theirs}/llm-configs", headers=service.headers(mine))
    chat = service.client.post(
        f"/v1/orgs/{theirs}/agents/luca/chat",
        json={"message": "hi"},
        headers=service.headers(mine, "org_user"),
    )
    as_admin = service.client.get(
        f"/v1/orgs/{theirs}/llm-configs", headers=service.headers(None, "platform_admin")
    )

    # Assert
    assert (configs.status_code, configs.json()) == (403, {"error": "forbidden"})
    assert (chat.status_code, chat.json()) == (403, {"error": "forbidden"})
    assert as_admin.status_code == 200
    with transaction(service.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(LlmUsageLog)) == 0


def test_roles_limit_what_a_token_can_do(service: Service) -> None:
    # Prepare
    org = service.org()

    # Execute
    user_configs = service.client.get(f"/v1/orgs/{org}/llm-configs", headers=service.headers(org, "org_user"))
    node_chat = service.client.post(
        f"/v1/orgs/{org}/agents/luca/chat", json={"message": "hi"}, headers=service.headers(org, "node")
    )
    user_billing = service.client.get(f"/v1/orgs/{org}/billing", headers=service.headers(org, "org_user"))

    # Assert
    assert [user_configs.status_code, node_chat.status_code, user_billing.status_code] == [403, 403, 403]


def test_signing_key_rotation_keeps_old_tokens_valid(service: Service) -> None:
    # Prepare
    org = service.org()
    old = service.token(org)

    # Execute
    with transaction(service.engine) as session:
        new_kid = service.services.tokens.rotate_signing_key(session)
    new = service.token(org)

    # Assert
    assert jwt.get_unverified_header(new)["kid"] == new_kid != jwt.get_unverified_header(old)["kid"]
    for token in (old, new):
        response = service.client.get(
            f"/v1/orgs/{org}/llm-configs", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200


def test_config_crud_never_returns_the_key(service: Service) -> None:
    # Prepare
    org = service.org()

    # Execute
    created = service.add_config(org, api_key="sk-crud-secret", api_endpoint="https://llm.example/v1")
    listed = service.client.get(f"/v1/orgs/{org}/llm-configs", headers=service.headers(org)).json()
    patched = service.client.patch(
        f"/v1/orgs/{org}/llm-configs/{created['id']}",
        json={"priority": 7, "api_key": "sk-new"},
        headers=service.headers(org),
    )
    deleted = service.client.delete(
        f"/v1/orgs/{org}/llm-configs/{created['id']}", headers=service.headers(org)
    )
    gone = service.client.get(f"/v1/orgs/{org}/llm-configs/{created['id']}", headers=service.headers(org))

    # Assert
    assert created["has_api_key"] is True and "api_key" not in created and "api_key_encrypted" not in created
    assert [c["id"] for c in listed] == [created["id"]]
    assert patched.status_code == 200 and patched.json()["priority"] == 7
    assert "sk-" not in str(listed) + patched.text
    assert deleted.status_code == 204 and gone.status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"provider": "skynet"}, "provider"),
        ({"provider": "azure_openai", "api_key": "k"}, "api_endpoint"),
        ({"provider": "openai"}, "api_key"),
        ({"api_endpoint": "ftp://host/v1", "api_key": "k"}, "api_endpoint"),
        ({"api_key": "k", "temperature": 3}, "temperature"),
        ({"api_key": "k", "rate_limit_rpm": 0}, "rate_limit_rpm"),
        ({"api_key": "k", "unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_provider_config_is_a_clear_422(
    service: Service, body: dict[str, object], fragment: str
) -> None:
    # Prepare
    org = service.org()
    full = {"provider": "openai", "display_name": "x", "model_id": "m", **body}

    # Execute
    response = service.client.post(f"/v1/orgs/{org}/llm-configs", json=full, headers=service.headers(org))

    # Assert
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input" and fragment in response.json()["message"]


def test_duplicate_provider_model_is_409(service: Service) -> None:
    # Prepare
    org = service.org()
    service.add_config(org, api_key="k")

    # Execute
    again = service.client.post(
        f"/v1/orgs/{org}/llm-configs",
        json={"provider": "openai", "display_name": "y", "model_id": "gpt-test", "api_key": "k"},
        headers=service.headers(org),
    )

    # Assert
    assert again.status_code == 409


def test_configs_are_isolated_between_tenants(service: Service) -> None:
    # Prepare
    a, b = service.org(), service.org()
    mine = service.add_config(a, api_key="k")

    # Execute
    b_list = service.client.get(f"/v1/orgs/{b}/llm-configs", headers=service.headers(b)).json()
    b_get = service.client.get(f"/v1/orgs/{b}/llm-configs/{mine['id']}", headers=service.headers(b))
    b_patch = service.client.patch(
        f"/v1/orgs/{b}/llm-configs/{mine['id']}", json={"priority": 9}, headers=service.headers(b)
    )
    b_delete = service.client.delete(f"/v1/orgs/{b}/llm-configs/{mine['id']}", headers=service.headers(b))

    # Assert
    assert b_list == [] and [b_get.status_code, b_patch.status_code, b_delete.status_code] == [404, 404, 404]
    assert (
        service.client.get(f"/v1/orgs/{a}/llm-configs/{mine['id']}", headers=service.headers(a)).json()[
            "priority"
        ]
        == 1
    )


def test_keys_are_unreadable_in_the_database_and_absent_from_logs(
    service: Service, provider_factory: Callable[..., FakeProvider], caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    secret = "sk-PLAINTEXT-" + uuid.uuid4().hex
    own = provider_factory(api_key=secret)
    org = service.org()
    caplog.set_level(logging.DEBUG)

    # Execute: store the key, use it (the provider checks it), rotate, and fail once with a wrong one.
    config = service.add_config(org, api_key=secret, api_endpoint=own.url)
    answered = service.chat(org).json()
    service.client.patch(
        f"/v1/orgs/{org}/llm-configs/{config['id']}",
        json={"api_key": secret + "x"},
        headers=service.headers(org),
    )
    service.chat(org)
    with transaction(service.engine) as session:
        service.services.keyring.rotate_data_key(session, org)
        service.services.keyring.rotate_kek(session)

    # Assert: no table holds the key (as text or bytes), no log line mentions it.
    assert answered["provider"] == "openai"
    needles = [secret.encode(), FALLBACK_KEY.encode()]
    inspector = sa.inspect(service.engine)
    with service.engine.connect() as connection:
        for table in inspector.get_table_names():
            for row in connection.execute(sa.text(f'SELECT * FROM "{table}"')):
                blob = repr(tuple(row)).encode() + b"".join(v for v in row if isinstance(v, bytes))
                assert not any(n in blob for n in needles), table
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert secret not in logged and FALLBACK_KEY not in logged
    assert (
        "sk-PLAINTEXT" not in service.client.get(f"/v1/orgs/{org}/usage", headers=service.headers(org)).text
    )


@pytest.mark.parametrize(
    ("agent", "body", "status"),
    [
        ("nobody", {"message": "hi"}, 404),
        ("luca", {"message": "   "}, 422),
        ("luca", {"message": "x" * 32_001}, 422),
        ("luca", {}, 422),
        ("luca", {"message": "hi", "temperature": 5}, 422),
        ("luca", {"message": "hi", "session_id": str(uuid.UUID(int=7))}, 404),
    ],
)
def test_bad_chat_input_is_a_clear_4xx_and_nothing_is_billed(
    service: Service, fallback: FakeProvider, agent: str, body: dict[str, object], status: int
) -> None:
    # Prepare
    org = service.org()

    # Execute
    response = service.client.post(
        f"/v1/orgs/{org}/agents/{agent}/chat", json=body, headers=service.headers(org, "org_user")
    )

    # Assert
    assert response.status_code == status and response.json()["message"]
    assert fallback.received == []
    with transaction(service.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(LlmUsageLog)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(FallbackBilling)) == 0


def test_a_repeated_request_id_is_answered_once_and_billed_once(
    service: Service, fallback: FakeProvider
) -> None:
    # Prepare
    org = service.org()

    # Execute
    first = service.chat(org, request_id="req-1").json()
    again = service.client.post(
        f"/v1/orgs/{org}/agents/luca/chat",
        json={"message": "What is the VAT rate?"},
        headers={**service.headers(org, "org_user"), "X-Request-Id": "req-1"},
    ).json()

    # Assert
    assert first == again
    assert len(fallback.received) == 1
    with transaction(service.engine) as session:
        bill = session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).one()
        usage = session.scalar(sa.select(sa.func.count()).select_from(LlmUsageLog))
    assert bill.total_fallback_requests == 1 and usage == 1


def test_usage_and_billing_routes_are_scoped_to_the_organization(
    service: Service, fallback: FakeProvider
) -> None:
    # Prepare
    a, b = service.org(), service.org()
    service.chat(a)
    service.chat(a)

    # Execute
    a_usage = service.client.get(f"/v1/orgs/{a}/usage", headers=service.headers(a)).json()
    a_billing = service.client.get(f"/v1/orgs/{a}/billing", headers=service.headers(a)).json()
    b_usage = service.client.get(f"/v1/orgs/{b}/usage", headers=service.headers(b)).json()
    b_billing = service.client.get(f"/v1/orgs/{b}/billing", headers=service.headers(b)).json()

    # Assert
    assert len(a_usage) == 2 and all(
        u["is_fallback"] and u["estimated_cost_usd"] == "0.000700" for u in a_usage
    )
    assert [
        (r["total_fallback_requests"], r["total_fallback_tokens"], r["total_cost_usd"], r["billing_model"])
        for r in a_billing
    ] == [(2, 60, "0.0014", "pay_as_you_go")]
    assert b_usage == [] and b_billing == []


def test_chat_reports_the_service_overhead_without_the_provider_time(
    service: Service, provider_factory: Callable[..., FakeProvider]
) -> None:
    # Prepare: a provider that takes 300 ms.
    slow = provider_factory(api_key="k-slow", delay_s=0.3)
    org = service.org()
    service.add_config(org, api_endpoint=slow.url, api_key="k-slow")

    # Execute: the second request (the first pays one-off start-up: the accounting writer thread,
    # the first connections, which a loaded machine stretched to seconds)
    service.chat(org)
    response = service.chat(org)

    # Assert: the header is the service's own time, far below the provider's 300 ms.
    assert response.status_code == 200, response.text
    overhead = float(response.headers["x-accute-overhead-ms"])
    assert 0 <= overhead < 250
    assert "x-accute-overhead-ms" in str(service.client.get("/openapi.json").json())


def test_a_cached_token_is_refused_once_it_expires(service: Service) -> None:
    # Prepare: a token valid for 2 s, used (and so remembered) while valid.
    org = service.org()
    token = service.token(org, role="org_user", ttl_s=2)
    url = f"/v1/orgs/{org}/agents/nobody/chat"
    headers = {"Authorization": f"Bearer {token}"}
    first = service.client.post(url, json={"message": "hi"}, headers=headers)
    remembered = service.services.tokens.cached(token)

    # Execute
    time.sleep(2.1)
    later = service.client.post(url, json={"message": "hi"}, headers=headers)

    # Assert: 404 (the agent) while valid; then the same cached token is a bare 401.
    assert first.status_code == 404 and remembered is not None and remembered.organization_id == org
    assert (later.status_code, later.json()) == (401, {"error": "unauthenticated"})
    assert service.services.tokens.cached(token) is None


def test_the_verified_token_cache_is_bounded(service: Service) -> None:
    # Prepare
    tokens = service.services.tokens
    tokens.verified_cache_size = 2
    org = service.org()
    issued = [service.token(org, role="org_user") for _ in range(3)]

    # Execute
    principals = [tokens.verify(t) for t in issued]

    # Assert: the least recently used one was forgotten (and still verifies from scratch).
    assert [tokens.cached(t) is not None for t in issued] == [False, True, True]
    assert tokens.verify(issued[0]) == principals[0]


def test_concurrent_requests_with_one_request_id_are_answered_alike_and_billed_once(
    engine: sa.Engine, tmp_path: Path, fallback: FakeProvider
) -> None:
    # Prepare
    app = create_app(make_settings(tmp_path, fallback.url), engine)
    with transaction(engine) as session:
        org = directory.create_organization(session, "twice firm").id
    token = app.state.services.tokens.issue(role="org_user", organization_id=org)

    async def fire(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60, trust_env=False) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"/v1/orgs/{org}/agents/luca/chat",
                        json={"message": "What is the VAT rate?", "request_id": "same-id"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    for _ in range(6)
                )
            )

    # Execute
    with running_app(app) as base:
        responses = asyncio.run(fire(base))

    # Assert: one answer for all, one request row, the winner's usage only, one charge.
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.text for r in responses}) == 1
    with transaction(engine) as session:
        requests = session.scalar(sa.select(sa.func.count()).select_from(LlmRequest))
        usage = session.scalar(sa.select(sa.func.count()).select_from(LlmUsageLog))
        bill = session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).one()
    assert (requests, usage, bill.total_fallback_requests) == (1, 1, 1)
