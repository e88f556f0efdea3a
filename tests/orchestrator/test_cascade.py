"""The cascade end to end over real loopback HTTP: order, fall-through, limits, circuit, retries."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import func, select, update

from aggregation.weights_store import WeightsStore
from schema import registry
from schema.db import transaction
from schema.models import FallbackBilling, LlmUsageLog, TenantLlmConfig, VamnInferenceLog
from tests.orchestrator.conftest import Service
from tests.orchestrator.fakes import FakeProvider


def _usage(service: Service, org: object) -> list[LlmUsageLog]:
    with transaction(service.engine) as session:
        query = (
            select(LlmUsageLog)
            .where(LlmUsageLog.organization_id == org)
            .order_by(LlmUsageLog.created_at, LlmUsageLog.latency_ms)
        )
        return list(session.scalars(query))


def _billing(service: Service, org: object) -> FallbackBilling | None:
    with transaction(service.engine) as session:
        return session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).first()


def test_tenant_configs_answer_in_priority_order(
    service: Service, provider_factory: Callable[..., FakeProvider], fallback: FakeProvider
) -> None:
    # Prepare
    second = provider_factory(api_key="key-second", reply="second")
    first = provider_factory(api_key="key-first", reply="first")
    org = service.org()
    service.add_config(org, model_id="m-second", api_endpoint=second.url, api_key="key-second", priority=5)
    service.add_config(org, model_id="m-first", api_endpoint=first.url, api_key="key-first", priority=1)

    # Execute
    response = service.chat(org)

    # Assert
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["content"], body["model_id"], body["is_fallback"]) == ("first", "m-first", False)
    assert (body["input_tokens"], body["output_tokens"], body["estimated_cost"]) == (10, 20, 0.0)
    assert len(first.received) == 1 and second.received == [] and fallback.received == []
    assert _billing(service, org) is None


@pytest.mark.parametrize("upstream", ["builtin", "httpx"])
def test_failing_tenant_provider_falls_through_to_next_then_fallback(
    service_factory: Callable[..., Service],
    provider_factory: Callable[..., FakeProvider],
    fallback: FakeProvider,
    upstream: str,
) -> None:
    # Prepare: the first provider rejects the key (401, not retried); the second is down (500).
    # Run with each HTTP client for provider calls (ACCUTE_UPSTREAM_CLIENT).
    service = service_factory(upstream_client=upstream)
    broken_auth = provider_factory(api_key="right-key")
    down = provider_factory(api_key="k2")
    down.always_status = 500
    org = service.org()
    service.add_config(org, model_id="m1", api_endpoint=broken_auth.url, api_key="wrong-key", priority=1)
    service.add_config(org, model_id="m2", api_endpoint=down.url, api_key="k2", priority=2)

    # Execute
    response = service.chat(org, agent="cadence")

    # Assert: 1 attempt on the 401, 3 on the 500 (retried), 1 fallback success; the fallback is billed.
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == "finaceverse_fallback" and body["is_fallback"] is True
    assert body["estimated_cost"] == 0.0007
    assert len(broken_auth.received) == 1 and len(down.received) == 3 and len(fallback.received) == 1
    rows = _usage(service, org)
    assert [(r.model_id, r.status, r.error_code) for r in rows] == [
        ("m1", "error", "http_401"),
        ("m2", "error", "http_500"),
        ("m2", "error", "http_500"),
        ("m2", "error", "http_500"),
        ("fallback-model", "success", None),
    ]
    assert [r.is_fallback for r in rows] == [False, False, False, False, True]
    bill = _billing(service, org)
    assert bill is not None
    assert (bill.total_fallback_requests, bill.total_fallback_tokens) == (1, 30)
    assert str(bill.total_cost_usd) == "0.0007"


def test_vamn_answers_before_fallback_when_the_head_has_an_active_model(
    service: Service, fallback: FakeProvider, tmp_path: object
) -> None:
    # Prepare: an active quantitative model (luca's primary head) in the registry and the store.
    store = WeightsStore(service.services.settings.weights_dir)
    rng = np.random.default_rng(0)
    checksum = store.put(
        {
            "fc1.weight": rng.normal(size=(8, 16)),
            "fc1.bias": np.zeros(8),
            "fc2.weight": rng.normal(size=(3, 8)),
        }
    )
    with transaction(service.engine) as session:
        row = registry.publish(
            session,
            model_name="vamn-q",
            model_version="1",
            head_type="quantitative",
            weights_checksum=checksum,
        )
        registry.activate(session, row.id)
    org = service.org()

    # Execute
    first = service.chat(org, message="net income for q3", agent="luca").json()
    again = service.chat(org, message="net income for q3", agent="luca").json()

    # Assert: deterministic, free, logged in both logs; the fallback never called.
    assert first["provider"] == "vamn" and first["model_id"] == "vamn-quantitative:vamn-q@1"
    assert first["content"] == again["content"] and first["content"].startswith("VAMN quantitative head")
    assert first["input_tokens"] == 4 and first["output_tokens"] == len(first["content"].split())
    assert fallback.received == []
    with transaction(service.engine) as session:
        logs = list(session.scalars(select(VamnInferenceLog).where(VamnInferenceLog.organization_id == org)))
    assert [(v.head_type, v.status, v.input_tokens) for v in logs] == [("quantitative", "success", 4)] * 2
    assert _billing(service, org) is None


def test_vamn_with_tampered_weights_is_unavailable_and_falls_back(
    service: Service, fallback: FakeProvider
) -> None:
    # Prepare: an active semantic model whose weights file no longer matches its checksum.
    store = WeightsStore(service.services.settings.weights_dir)
    checksum = store.put({"fc.weight": np.ones((2, 4))})
    store.path(checksum).write_bytes(store.path(checksum).read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with transaction(service.engine) as session:
        row = registry.publish(
            session, model_name="vamn-s", model_version="1", head_type="semantic", weights_checksum=checksum
        )
        registry.activate(session, row.id)
    org = service.org()

    # Execute
    body = service.chat(org, agent="scribe").json()

    # Assert
    assert body["provider"] == "finaceverse_fallback"
    assert len(fallback.received) == 1


def test_exhausted_rate_limit_skips_the_config(
    service: Service, provider_factory: Callable[..., FakeProvider], fallback: FakeProvider
) -> None:
    # Prepare: 2 requests per minute allowed.
    own = provider_factory(api_key="k")
    org = service.org()
    service.add_config(org, api_endpoint=own.url, api_key="k", rate_limit_rpm=2)

    # Execute
    providers = [service.chat(org).json()["provider"] for _ in range(3)]

    # Assert: the third request skipped the config without calling it.
    assert providers == ["openai", "openai", "finaceverse_fallback"]
    assert len(own.received) == 2


def test_token_rate_limit_skips_the_config(
    service: Service, provider_factory: Callable[..., FakeProvider], fallback: FakeProvider
) -> None:
    # Prepare: 32 tokens per minute; a request is estimated at its 5 words + max_tokens 20 = 25
    # (reserved when it is let through), then counted as the 30 it used.
    own = provider_factory(api_key="k")
    org = service.org()
    service.add_config(org, api_endpoint=own.url, api_key="k", rate_limit_tpm=32, max_tokens=20)

    # Execute
    providers = [service.chat(org).json()["provider"] for _ in range(2)]

    # Assert
    assert providers == ["openai", "finaceverse_fallback"]


def test_circuit_opens_marks_unhealthy_then_recovers(
    service: Service, provider_factory: Callable[..., FakeProvider], fallback: FakeProvider
) -> None:
    # Prepare: threshold 3 failed requests, cooldown 0.3 s; the provider is down.
    own = provider_factory(api_key="k")
    own.always_status = 503
    org = service.org()
    config = service.add_config(org, api_endpoint=own.url, api_key="k")

    def health() -> str | None:
        with transaction(service.engine) as session:
            row = session.get(TenantLlmConfig, uuid.UUID(config["id"]))
            return None if row is None else row.health_status

    # Execute: three failing requests open the circuit.
    for _ in range(3):
        assert service.chat(org).json()["provider"] == "finaceverse_fallback"
    calls_when_open = len(own.received)
    opened = health()
    skipped = service.chat(org).json()["provider"]
    calls_after_skip = len(own.received)
    own.always_status = None
    time.sleep(0.35)
    recovered = service.chat(org).json()["provider"]

    # Assert
    assert opened == "unhealthy"
    assert skipped == "finaceverse_fallback" and calls_after_skip == calls_when_open
    assert recovered == "openai"
    assert health() == "healthy"


def test_retry_honours_retry_after_then_succeeds(
    service: Service, provider_factory: Callable[..., FakeProvider], fallback: FakeProvider
) -> None:
    # Prepare: one 429 asking to wait 0.2 s.
    own = provider_factory(api_key="k")
    own.script((429, {"Retry-After": "0.2"}))
    org = service.org()
    service.add_config(org, api_endpoint=own.url, api_key="k")

    # Execute
    started = time.monotonic()
    body = service.chat(org).json()
    elapsed = time.monotonic() - started

    # Assert
    assert body["provider"] == "openai"
    assert elapsed >= 0.2
    assert [(r.status, r.error_code) for r in _usage(service, org)] == [
        ("error", "http_429"),
        ("success", None),
    ]


def test_retry_after_longer_than_the_limit_moves_on(
    service: Service, provider_factory: Callable[..., FakeProvider], fallback: FakeProvider
) -> None:
    # Prepare: the provider asks for 60 s; the backoff limit is 1 s.
    own = provider_factory(api_key="k")
    own.script((429, {"Retry-After": "60"}))
    org = service.org()
    service.add_config(org, api_endpoint=own.url, api_key="k")

    # Execute
    started = time.monotonic()
    body = service.chat(org).json()

    # Assert
    assert body["provider"] == "finaceverse_fallback"
    assert time.monotonic() - started < 5
    assert len(own.received) == 1


def test_deadline_bounds_the_whole_request(
    service_factory: Callable[..., Service],
    provider_factory: Callable[..., FakeProvider],
    fallback: FakeProvider,
) -> None:
    # Prepare: a provider slower than the 0.5 s deadline; everything else slow too.
    slow = provider_factory(api_key="k", delay_s=2.0)
    fallback.delay_s = 2.0
    service = service_factory(cascade_deadline_s=0.5)
    org = service.org()
    service.add_config(org, api_endpoint=slow.url, api_key="k")

    # Execute
    started = time.monotonic()
    response = service.chat(org)
    elapsed = time.monotonic() - started

    # Assert: 504, nothing billed; the tenant attempt stopped early enough for the fallback to
    # be tried in the reserve, and both timed-out attempts are logged.
    assert response.status_code == 504
    assert response.json()["error"] == "deadline_exceeded"
    assert elapsed < 1.8
    assert _billing(service, org) is None
    rows = sorted(_usage(service, org), key=lambda r: r.is_fallback)
    assert [(r.status, r.error_code, r.is_fallback) for r in rows] == [
        ("error", "timeout", False),
        ("error", "timeout", True),
    ]


def test_everything_down_is_502_and_nothing_billed(service: Service, fallback: FakeProvider) -> None:
    # Prepare
    fallback.always_status = 500
    org = service.org()

    # Execute
    response = service.chat(org, agent="forma")

    # Assert
    assert response.status_code == 502
    assert _billing(service, org) is None
    rows = _usage(service, org)
    assert len(rows) == 3 and all(r.status == "error" and r.is_fallback for r in rows)
    with transaction(service.engine) as session:
        assert session.scalar(select(func.count()).select_from(FallbackBilling)) == 0


def test_configs_older_than_the_ttl_are_used_once_while_they_reload(
    service_factory: Callable[..., Service],
    provider_factory: Callable[..., FakeProvider],
    fallback: FakeProvider,
) -> None:
    # Prepare: configs cached for 1 s; the first answer marks the config healthy (which reloads
    # them), the second is served from the cache; then another process deactivates the config.
    service = service_factory(config_cache_ttl_s=1.0)
    own = provider_factory(api_key="k-own")
    org = service.org()
    config = service.add_config(org, api_endpoint=own.url, api_key="k-own")
    assert [service.chat(org).json()["provider"] for _ in range(2)] == ["openai", "openai"]
    with transaction(service.engine) as session:
        session.execute(
            update(TenantLlmConfig)
            .where(TenantLlmConfig.id == uuid.UUID(config["id"]))
            .values(is_active=False)
        )

    # Execute: within the TTL, just after it (starts the reload), and once the reload landed.
    fresh = service.chat(org).json()["provider"]
    time.sleep(1.1)
    stale = service.chat(org).json()["provider"]
    time.sleep(0.5)
    reloaded = service.chat(org).json()["provider"]

    # Assert
    assert (fresh, stale, reloaded) == ("openai", "openai", "finaceverse_fallback")
    assert len(own.received) == 4 and len(fallback.received) == 1
