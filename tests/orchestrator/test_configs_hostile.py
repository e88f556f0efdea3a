"""Provider configs against a hostile tenant admin: key exfiltration by PATCH, SSRF, bad endpoints."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from schema.db import transaction
from schema.models import LlmUsageLog
from tests.orchestrator.conftest import Service
from tests.orchestrator.fakes import FakeProvider


def test_patching_the_endpoint_without_the_key_is_refused_and_the_key_never_travels(
    service: Service, provider_factory: Callable[..., FakeProvider]
) -> None:
    # Prepare: a config with a key, and an attacker's endpoint that records what it receives.
    honest = provider_factory(api_key="sk-secret-key")
    attacker = provider_factory()
    org = service.org()
    config = service.add_config(org, api_endpoint=honest.url, api_key="sk-secret-key")
    url = f"/v1/orgs/{org}/llm-configs/{config['id']}"

    # Execute
    moved = service.client.patch(url, json={"api_endpoint": attacker.url}, headers=service.headers(org))
    chat = service.chat(org)
    rekeyed = service.client.patch(
        url, json={"api_endpoint": attacker.url, "api_key": "sk-new-key"}, headers=service.headers(org)
    )
    renamed = service.client.patch(url, json={"display_name": "still mine"}, headers=service.headers(org))

    # Assert
    assert moved.status_code == 409 and "send api_key again" in moved.json()["message"]
    assert chat.status_code == 200 and chat.json()["provider"] == "openai"  # still the honest endpoint
    assert rekeyed.status_code == 200 and rekeyed.json()["api_endpoint"] == attacker.url
    assert renamed.status_code == 200
    sent = [r.headers.get("authorization") for r in attacker.received]
    assert "Bearer sk-secret-key" not in sent
    assert [r.headers.get("authorization") for r in honest.received] == ["Bearer sk-secret-key"]


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254/latest",
        "http://127.0.0.2:5432",
        "http://0x7f000001:5432",
        "http://2130706433/v1",
        "http://[::1]:5432",
        "http://[::ffff:10.0.0.1]/v1",
        "http://10.0.0.5:11434/v1",
        "http://0.0.0.0:80",
    ],
)
def test_internal_endpoints_are_refused_when_saved(
    service_factory: Callable[..., Service], endpoint: str
) -> None:
    # Prepare: no allow list at all
    service = service_factory(egress_allow="")
    org = service.org()
    body = {"provider": "custom", "display_name": "x", "model_id": "m", "api_endpoint": endpoint}

    # Execute
    created = service.client.post(f"/v1/orgs/{org}/llm-configs", json=body, headers=service.headers(org))

    # Assert
    assert created.status_code == 422, created.text
    assert "internal address" in created.json()["message"]


@pytest.mark.parametrize(
    "endpoint",
    ["http://host/v1\r\nx-evil: 1", "http://host name/v1", "http://host:99999/v1", "http://host:0/v1"],
)
def test_malformed_endpoints_are_refused(service: Service, endpoint: str) -> None:
    org = service.org()
    body = {"provider": "custom", "display_name": "x", "model_id": "m", "api_endpoint": endpoint}
    created = service.client.post(f"/v1/orgs/{org}/llm-configs", json=body, headers=service.headers(org))
    assert created.status_code == 422, created.text


def test_a_key_with_nul_or_line_breaks_is_refused(service: Service) -> None:
    org = service.org()
    for key in ("sk-\x00abc", "sk-abc\r\nx-evil: 1"):
        body = {"provider": "openai", "display_name": "x", "model_id": "m", "api_key": key}
        created = service.client.post(f"/v1/orgs/{org}/llm-configs", json=body, headers=service.headers(org))
        assert created.status_code == 422 and "control characters" in created.json()["message"]


def test_a_name_that_resolves_to_loopback_is_refused_at_connect_time(
    service_factory: Callable[..., Service], provider_factory: Callable[..., FakeProvider]
) -> None:
    # Prepare: 'localhost' passes the save-time check (a name), but resolves to loopback.
    provider = provider_factory()
    service = service_factory(egress_allow="")
    org = service.org()
    port = provider.url.rsplit(":", 1)[1]
    service.add_config(org, provider="custom", api_endpoint=f"http://localhost:{port}")

    # Execute
    response = service.chat(org)

    # Assert: the tenant provider was never contacted; the (exempt) fallback on loopback answered.
    assert response.status_code == 200 and response.json()["is_fallback"] is True
    assert provider.received == []
    with transaction(service.engine) as session:
        codes = session.scalars(
            sa.select(LlmUsageLog.error_code).where(
                LlmUsageLog.organization_id == org, LlmUsageLog.is_fallback.is_(False)
            )
        ).all()
    assert codes == ["egress_denied"]


def test_the_allow_list_lets_a_self_hosted_provider_through(
    service_factory: Callable[..., Service], provider_factory: Callable[..., FakeProvider]
) -> None:
    provider = provider_factory()
    port = provider.url.rsplit(":", 1)[1]
    service = service_factory(egress_allow="10.0.0.0/8, localhost")
    org = service.org()
    service.add_config(org, provider="custom", api_endpoint=f"http://localhost:{port}")

    response = service.chat(org)

    assert response.status_code == 200 and response.json()["is_fallback"] is False
    assert len(provider.received) == 1
