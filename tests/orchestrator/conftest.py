"""Fixtures of the orchestrator tests: the service on a migrated database, fake providers on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from orchestrator.service import Services, create_app
from schema import directory
from schema.config import Settings
from schema.db import transaction
from tests.orchestrator.fakes import FakeProvider, running

FALLBACK_KEY = "fb-platform-key-0123456789"
#: Prices chosen so that one fallback call (10 in, 20 out) costs exactly 0.0007 USD.
TEST_PRICES = {"fallback-model": {"input": 10.0, "output": 30.0}, "default": {"input": 1.0, "output": 2.0}}


def make_settings(tmp_path: Path, fallback_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kek_file": tmp_path / "state" / "kek.json",
        "weights_dir": tmp_path / "weights",
        "fallback_provider": "openai",
        "fallback_api_endpoint": fallback_url,
        "fallback_api_key": FALLBACK_KEY,
        "fallback_model": "fallback-model",
        "price_table": TEST_PRICES,
        "retry_backoff_s": 0.01,
        "retry_backoff_max_s": 1.0,
        "circuit_cooldown_s": 0.3,
        "provider_timeout_s": 5.0,
        "cascade_deadline_s": 20.0,
        "config_cache_ttl_s": 0.0,
        # The fake providers listen on loopback, which the egress policy refuses by default.
        "egress_allow": "127.0.0.1",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Service:
    client: TestClient
    services: Services
    engine: Engine

    def org(self, name: str | None = None, billing_model: str = "pay_as_you_go") -> uuid.UUID:
        with transaction(self.engine) as session:
            return directory.create_organization(
                session, name or f"firm-{uuid.uuid4().hex[:8]}", billing_model
            ).id

    def token(self, org: uuid.UUID | None, role: str = "org_admin", ttl_s: int | None = None) -> str:
        return self.services.tokens.issue(role=role, organization_id=org, ttl_s=ttl_s)

    def headers(self, org: uuid.UUID | None, role: str = "org_admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(org, role)}"}

    def add_config(self, org: uuid.UUID, **fields: Any) -> dict[str, Any]:
        body = {"provider": "openai", "display_name": "mine", "model_id": "gpt-test", "priority": 1, **fields}
        response = self.client.post(f"/v1/orgs/{org}/llm-configs", json=body, headers=self.headers(org))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def chat(
        self, org: uuid.UUID, message: str = "What is the VAT rate?", agent: str = "luca", **body: Any
    ) -> Any:
        return self.client.post(
            f"/v1/orgs/{org}/agents/{agent}/chat",
            json={"message": message, **body},
            headers=self.headers(org, "org_user"),
        )


@pytest.fixture
def fallback() -> Iterator[FakeProvider]:
    with running(FakeProvider(api_key=FALLBACK_KEY, reply="fallback answer")) as provider:
        yield provider


@pytest.fixture
def provider_factory() -> Iterator[Callable[..., FakeProvider]]:
    """Start more fake providers; all stop at the end of the test."""
    stack: list[Any] = []

    def start(**fields: Any) -> FakeProvider:
        context = running(FakeProvider(**fields))
        stack.append(context)
        return context.__enter__()

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


@pytest.fixture
def service_factory(
    engine: Engine, tmp_path: Path, fallback: FakeProvider
) -> Iterator[Callable[..., Service]]:
    clients: list[TestClient] = []

    def build(**overrides: Any) -> Service:
        settings = make_settings(tmp_path, fallback.url, **overrides)
        app = create_app(settings, engine)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return Service(client, app.state.services, engine)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory()
