"""``/metrics``: Prometheus text parsed with prometheus_client's parser, numbers checked against
the ledger and the tables they come from; the token; bounded labels."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from orchestrator.hub import store
from privacy import ledger, timing
from schema.db import transaction
from tests.orchestrator.admin_world import POLICY, build_world
from tests.orchestrator.conftest import Service

TOKEN = "scrape-token-0123456789"


def _samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_metrics_numbers_equal_the_ledger_and_the_tables(service_factory: Callable[..., Service]) -> None:
    # Prepare
    service = service_factory(metrics_token=TOKEN)
    world = build_world(service)
    charges_before = timing.CHARGES.count
    headers = {"Authorization": f"Bearer {service.token(None, 'platform_admin')}"}
    assert service.client.get("/v1/admin/budgets", headers=headers).status_code == 200
    assert service.client.get(f"/v1/admin/budgets/{world.acme}/digits", headers=headers).status_code == 200

    # Execute
    response = service.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    # Assert
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    with transaction(service.engine) as session:
        budgets = ledger.budget_rows(session, policy=POLICY)
    spent = {
        (s.labels["organization_id"], s.labels["model_type"], s.labels["unit"]): s.value
        for s in samples["accute_privacy_epsilon_spent"]
    }
    caps = {
        (s.labels["organization_id"], s.labels["model_type"], s.labels["unit"]): s.value
        for s in samples["accute_privacy_epsilon_cap"]
    }
    assert spent == {(b.organization_id, b.model_type, b.unit): b.epsilon_spent for b in budgets}
    assert caps == {(b.organization_id, b.model_type, b.unit): b.epsilon_cap for b in budgets}
    by_status = {s.labels["status"]: s.value for s in samples["accute_privacy_budgets"]}
    assert by_status == {"ok": 1.0, "near_cap": 1.0, "exhausted": 0.0}
    alerts = {
        (s.labels["model_type"], s.labels["threshold"]): s.value
        for s in samples["accute_privacy_budget_alerts_total"]
    }
    assert alerts == {("digits", "near_cap"): 1.0}
    contributions = {
        (s.labels["model_type"], s.labels["status"]): s.value for s in samples["accute_fl_contributions"]
    }
    assert contributions == {("digits", "accepted"): 3.0}
    rounds = {s.labels["model_type"]: s.value for s in samples["accute_fl_round_duration_seconds_count"]}
    assert rounds == {"digits": 1.0}
    with transaction(service.engine) as session:
        hub = store.status(session)
    assert hub["pending"] > 0  # the world's consents, rounds and alert are hub events not yet relayed
    assert samples["accute_hub_outbox_pending"][0].value == hub["pending"]
    assert samples["accute_hub_outbox_dead"][0].value == hub["dead"] == 0
    assert "accute_hub_relay_published_total" in samples
    charge_count = samples["accute_privacy_charge_duration_seconds_count"][0].value
    assert charge_count >= 3 and charge_count >= charges_before
    requests = {
        (s.labels["route"], s.labels["method"], s.labels["status_class"]): s.value
        for s in samples["accute_http_request_duration_seconds_count"]
    }
    assert requests[("/v1/admin/budgets", "GET", "2xx")] == 1.0
    assert requests[("/v1/admin/budgets/{org}/{model_type}", "GET", "2xx")] == 1.0
    labels = {k for family in samples.values() for s in family for k in s.labels}
    assert labels <= {
        "organization_id",
        "model_type",
        "unit",
        "status",
        "threshold",
        "route",
        "method",
        "status_class",
        "provider",
        "outcome",
        "le",
    }


def test_cascade_requests_and_fallback_tokens_come_from_usage_and_billing(
    service_factory: Callable[..., Service],
) -> None:
    # Prepare: one fallback answer (10 in, 20 out).
    service = service_factory(metrics_token=TOKEN)
    org = service.org()
    assert service.chat(org).status_code == 200

    # Execute
    samples = _samples(service.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text)

    # Assert
    requests = {
        (s.labels["provider"], s.labels["outcome"]): s.value for s in samples["accute_cascade_requests_total"]
    }
    assert requests == {("finaceverse_fallback", "success"): 1.0}
    tokens = {s.labels["organization_id"]: s.value for s in samples["accute_fallback_tokens_billed_total"]}
    assert tokens == {str(org): 30.0}
    chat = [
        s
        for s in samples["accute_http_request_duration_seconds_count"]
        if s.labels["route"].endswith("/chat")
    ]
    assert [(s.labels["route"], s.value) for s in chat] == [("/v1/orgs/{org}/agents/{agent_slug}/chat", 1.0)]


def test_metrics_need_the_token_and_are_off_without_one(service_factory: Callable[..., Service]) -> None:
    # Prepare
    on = service_factory(metrics_token=TOKEN)
    off = service_factory()
    admin = {"Authorization": f"Bearer {on.token(None, 'platform_admin')}"}

    # Execute
    anonymous = on.client.get("/metrics")
    wrong = on.client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    a_jwt = on.client.get("/metrics", headers=admin)
    disabled = off.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    # Assert
    assert [anonymous.status_code, wrong.status_code, a_jwt.status_code] == [401, 401, 401]
    assert anonymous.json() == {"error": "unauthenticated"}
    assert disabled.status_code == 404 and disabled.json()["error"] == "not_found"
