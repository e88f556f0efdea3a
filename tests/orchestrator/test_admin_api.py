"""The admin API over HTTP on both backends: who may call what, tenant isolation, pagination, and
numbers equal to the CLI's for the same database."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from orchestrator.cli import context
from orchestrator.cli.main import main
from privacy import ledger
from schema.db import transaction
from schema.models import FlRun, ImmutableAuditLog, ZeroTrustAccessLog
from tests.orchestrator.admin_world import POLICY, World, build_world
from tests.orchestrator.conftest import Service

CALLERS = ("platform", "admin_own", "admin_other", "user", "node", "anonymous")


@pytest.fixture
def world(service: Service) -> World:
    return build_world(service)


def _headers(service: Service, world: World, caller: str) -> dict[str, str]:
    if caller == "anonymous":
        return {}
    role, org = {
        "platform": ("platform_admin", None),
        "admin_own": ("org_admin", world.acme),
        "admin_other": ("org_admin", world.baker),
        "user": ("org_user", world.acme),
        "node": ("node", world.acme),
    }[caller]
    return {"Authorization": f"Bearer {service.token(org, role)}"}


def _cli(
    service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> Any:
    """``accute-fl ...`` in-process on the service's database, its JSON output."""
    monkeypatch.setenv("ACCUTE_DATABASE_URL", service.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ACCUTE_KEK_FILE", str(service.services.settings.kek_file))
    context.reset()
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    context.reset()
    assert code == 0, out.err
    return json.loads(out.out)


def _read_routes(world: World) -> list[tuple[str, dict[str, int]]]:
    """Read-only routes scoped to Acme, with the status each caller gets."""
    acme = world.acme
    own = {"platform": 200, "admin_own": 200, "admin_other": 403, "user": 403, "node": 403, "anonymous": 401}
    mine = own | {"admin_other": 200}  # no organization named: an org admin sees its own
    return [
        ("/v1/admin/budgets", mine),
        (f"/v1/admin/budgets?organization_id={acme}", own),
        (f"/v1/admin/budgets/{acme}/digits", own),
        (f"/v1/admin/budget-alerts?organization_id={acme}", own),
        ("/v1/admin/budget-alerts", mine),
        ("/v1/admin/runs", mine),
        (f"/v1/admin/runs?organization_id={acme}", own),
        (f"/v1/admin/runs/{world.run}", own | {"admin_other": 200}),  # Baker took part too
        (f"/v1/admin/contributions?organization_id={acme}", own),
        (f"/v1/admin/contributions?run={world.run}", mine),
        ("/v1/admin/registry", mine),
        (f"/v1/admin/consent/{acme}/counts", own),
        (f"/v1/admin/consent/snapshots?organization_id={acme}", own),
        ("/v1/admin/consent/snapshots", mine),
        (f"/v1/admin/dsr?organization_id={acme}", own),
        ("/v1/admin/dsr?overdue=true", mine),
    ]


def test_every_read_route_answers_each_caller_as_its_role_allows(service: Service, world: World) -> None:
    for path, expected in _read_routes(world):
        for caller in CALLERS:
            # Execute
            response = service.client.get(path, headers=_headers(service, world, caller))

            # Assert
            assert response.status_code == expected[caller], (path, caller, response.text)
            if response.status_code == 403:
                assert response.json() == {"error": "forbidden"}
            if response.status_code == 401:
                assert response.json() == {"error": "unauthenticated"}


def test_state_changing_routes_are_refused_to_every_non_platform_caller(
    service: Service, world: World
) -> None:
    # Prepare
    changes = [
        ("PUT", f"/v1/admin/budgets/{world.acme}/digits/cap", {"epsilon_cap": 20.0, "delta": 1e-5}),
        ("POST", f"/v1/admin/registry/{world.version_id}/promote", None),
        ("POST", f"/v1/admin/registry/{world.head_type}/rollback", None),
    ]
    for method, path, body in changes:
        for caller, status in (
            ("admin_own", 403),
            ("admin_other", 403),
            ("user", 403),
            ("node", 403),
            ("anonymous", 401),
        ):
            # Execute
            response = service.client.request(
                method, path, json=body, headers=_headers(service, world, caller)
            )

            # Assert
            assert response.status_code == status, (path, caller, response.text)
    for path in (f"/v1/admin/dsr/{world.open_request}/process", "/v1/admin/audit/verify"):
        for caller, status in (("user", 403), ("node", 403), ("anonymous", 401)):
            response = service.client.post(path, json={}, headers=_headers(service, world, caller))
            assert response.status_code == status, (path, caller, response.text)
    with transaction(service.engine) as session:
        cap = ledger.budget_rows(session, world.acme, policy=POLICY)[0].epsilon_cap
    assert cap != 20.0


def test_an_org_admin_sees_only_its_own_organization_and_a_probe_is_logged(
    service: Service, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    headers = _headers(service, world, "admin_other")  # Baker's admin

    # Execute
    budgets = service.client.get("/v1/admin/budgets", headers=headers).json()
    run = service.client.get(f"/v1/admin/runs/{world.run}", headers=headers).json()
    contributions = service.client.get(f"/v1/admin/contributions?run={world.run}", headers=headers).json()
    dsrs = service.client.get("/v1/admin/dsr", headers=headers).json()
    with caplog.at_level(logging.WARNING, logger="accute.orchestrator.admin"):
        probe = service.client.get(f"/v1/admin/budgets/{world.acme}/digits", headers=headers)
    processed = service.client.post(f"/v1/admin/dsr/{world.open_request}/process", json={}, headers=headers)

    # Assert
    assert {b["organization_id"] for b in budgets["items"]} == {str(world.baker)} and budgets["total"] == 1
    assert [t["tenant"] for t in run["tenants"]] == ["tenant-1"]
    assert all(set(r["tenants"]) <= {"tenant-1"} for r in run["rounds"]) and run["rounds"][0]["metric"] == 0.5
    assert contributions["total"] == 0  # Baker's contribution has no outcome in this run
    assert dsrs == {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert probe.status_code == 403 and probe.json() == {"error": "forbidden"}
    assert processed.status_code == 404  # another organization's request is reported missing
    # The probe is refused by the zero-trust gate (the token's organization is not the path's) and
    # logged in zero_trust_access_log, without the token.
    denied = _eventually(lambda: _access_log(service, f"/v1/admin/budgets/{world.acme}/digits"))
    assert denied and denied[0].access_decision == "deny" and denied[0].factors_evaluated["role_ok"] is False
    assert denied[0].organization_id == world.baker
    assert headers["Authorization"].split()[1] not in str(denied[0].factors_evaluated)
    assert not caplog.records  # the gate answered first: the admin scope was not reached


def test_in_a_central_dp_run_a_tenant_does_not_see_how_many_took_part(service: Service, world: World) -> None:
    # Prepare: the world's run becomes a central-DP run (the tenant is the unit of privacy).
    with transaction(service.engine) as session:
        run = session.scalar(select(FlRun).where(FlRun.name == world.run))
        assert run is not None
        run.config = {**run.config, "dp": "central"}

    # Execute
    tenant_view = service.client.get(
        f"/v1/admin/runs/{world.run}", headers=_headers(service, world, "admin_other")
    )
    platform_view = service.client.get(
        f"/v1/admin/runs/{world.run}", headers=_headers(service, world, "platform")
    )

    # Assert: Baker's admin sees its own outcome but not the round's contributor count; the platform
    # admin (the curator's operator) still does.
    assert tenant_view.status_code == platform_view.status_code == 200
    assert [r["accepted"] for r in tenant_view.json()["rounds"]] == [None]
    assert set(tenant_view.json()["rounds"][0]["tenants"]) == {"tenant-1"}
    assert [r["accepted"] for r in platform_view.json()["rounds"]] == [1]


def test_without_the_gate_the_admin_scope_refuses_and_logs_a_probe(
    service_factory: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the zero-trust gate off, so the admin scope is the only check.
    service = service_factory(zero_trust_enabled=False)
    world = build_world(service)
    headers = _headers(service, world, "admin_other")

    # Execute
    with caplog.at_level(logging.WARNING, logger="accute.orchestrator.admin"):
        probe = service.client.get(f"/v1/admin/budgets/{world.acme}/digits", headers=headers)

    # Assert
    logged = [r.getMessage() for r in caplog.records if "probe" in r.getMessage()]
    assert probe.status_code == 403 and probe.json() == {"error": "forbidden"}
    assert len(logged) == 1 and str(world.acme) in logged[0]
    assert "/v1/admin/budgets/{org}/{model_type}" in logged[0]
    assert "Bearer" not in logged[0] and headers["Authorization"].split()[1] not in logged[0]


def _access_log(service: Service, path: str) -> list[ZeroTrustAccessLog]:
    with transaction(service.engine) as session:
        return list(
            session.scalars(
                select(ZeroTrustAccessLog).where(ZeroTrustAccessLog.resource_requested == f"GET {path}")
            )
        )


def _eventually(
    probe: Callable[[], list[ZeroTrustAccessLog]], seconds: float = 5.0
) -> list[ZeroTrustAccessLog]:
    deadline = time.monotonic() + seconds
    while not (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_budgets_equal_budget_show_json_and_one_budget_equals_budget_history(
    service: Service, world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    headers = _headers(service, world, "platform")

    # Execute
    listed = service.client.get("/v1/admin/budgets?limit=1000", headers=headers).json()
    detail = service.client.get(f"/v1/admin/budgets/{world.acme}/digits", headers=headers).json()
    shown = _cli(service, monkeypatch, capsys, "budget", "show", "--json")
    history = _cli(
        service,
        monkeypatch,
        capsys,
        "budget",
        "history",
        "--org",
        str(world.acme),
        "--model-type",
        "digits",
        "--json",
    )

    # Assert: the same rows, the same order, the same floats (bit for bit through JSON).
    assert listed["total"] == len(shown) == 2
    assert listed["items"] == shown
    assert [b["status"] for b in listed["items"] if b["organization_id"] == str(world.acme)] == ["near_cap"]
    assert detail["accountant"] == "rdp" and detail["budgets"] == [
        r for r in shown if r["organization_id"] == str(world.acme)
    ]
    keys = ("id", "run", "mechanism", "unit", "epsilon_after", "aggregation_round", "created_at")
    assert [{k: e[k] for k in keys} for e in detail["events"]] == [{k: h[k] for k in keys} for h in history]
    assert [e["run"] for e in detail["events"]] == [None, world.run]  # the second charge is the run's


def test_pages_are_sorted_windows_of_the_total(service: Service, world: World) -> None:
    # Prepare: 7 more organizations with a budget each.
    with transaction(service.engine) as session:
        from schema import directory

        for n in range(7):
            org = directory.create_organization(session, f"firm {n} {uuid.uuid4().hex[:6]}")
            ledger.set_budget(session, org.id, "digits", 3.0, 1e-5, policy=POLICY, unit="record")
    headers = _headers(service, world, "platform")

    # Execute
    everything = service.client.get("/v1/admin/budgets", headers=headers).json()
    pages = [
        service.client.get(f"/v1/admin/budgets?limit=3&offset={o}", headers=headers).json()
        for o in (0, 3, 6, 9)
    ]
    ok_only = service.client.get("/v1/admin/budgets?status=ok&limit=2", headers=headers).json()
    refused = service.client.get("/v1/admin/budgets?limit=0", headers=headers)
    bad_status = service.client.get("/v1/admin/budgets?status=nearly", headers=headers)

    # Assert
    assert everything["total"] == 9 and [p["total"] for p in pages] == [9] * 4
    assert [len(p["items"]) for p in pages] == [3, 3, 3, 0]
    assert [i for p in pages for i in p["items"]] == everything["items"]
    keys = [(i["organization_id"], i["model_type"], i["unit"]) for i in everything["items"]]
    assert keys == sorted(keys)
    assert (
        ok_only["total"] == 8
        and len(ok_only["items"]) == 2
        and {i["status"] for i in ok_only["items"]} == {"ok"}
    )
    assert refused.status_code == 422 and bad_status.status_code == 422


def test_setting_a_cap_is_budget_set_audited_and_alerts_when_it_crosses(
    service: Service, world: World
) -> None:
    headers = _headers(service, world, "platform")

    # Execute: lower Baker's cap below what it spent.
    response = service.client.put(
        f"/v1/admin/budgets/{world.baker}/digits/cap",
        json={"epsilon_cap": 1.0, "delta": 1e-5, "unit": "record"},
        headers=headers,
    )
    alerts = service.client.get(
        f"/v1/admin/budget-alerts?organization_id={world.baker}", headers=headers
    ).json()
    invalid = service.client.put(
        f"/v1/admin/budgets/{world.baker}/digits/cap",
        json={"epsilon_cap": -1, "delta": 1e-5},
        headers=headers,
    )

    # Assert
    assert response.status_code == 200, response.text
    assert [(b["unit"], b["epsilon_cap"], b["status"]) for b in response.json()] == [
        ("record", 1.0, "exhausted")
    ]
    assert [(a["threshold"], a["epsilon_cap"]) for a in alerts["items"]] == [
        ("exhausted", 1.0),
        ("near_cap", 1.0),
    ]
    assert invalid.status_code == 422
    with transaction(service.engine) as session:
        audited = session.scalar(
            select(func.count()).where(
                ImmutableAuditLog.organization_id == world.baker,
                ImmutableAuditLog.action == "privacy_budget.set",
            )
        )
    assert audited == 1


def test_runs_contributions_registry_and_consent_views(service: Service, world: World) -> None:
    headers = _headers(service, world, "platform")

    # Execute
    runs = service.client.get("/v1/admin/runs", headers=headers).json()
    run = service.client.get(f"/v1/admin/runs/{world.run}", headers=headers).json()
    contributions = service.client.get(f"/v1/admin/contributions?run={world.run}", headers=headers).json()
    versions = service.client.get("/v1/admin/registry", headers=headers).json()
    counts = service.client.get(f"/v1/admin/consent/{world.acme}/counts", headers=headers).json()
    snapshots = service.client.get("/v1/admin/consent/snapshots", headers=headers).json()
    missing = service.client.get("/v1/admin/runs/no-such-run", headers=headers)

    # Assert
    assert [r["name"] for r in runs["items"]] == [world.run] and runs["items"][0]["tenants"] == 2
    assert run["rounds"][0]["tenants"]["tenant-1"] == {
        "status": "rejected_budget",
        "reason": "epsilon would reach 9.1, over the cap 8",
        "sampled": False,
        "epsilon_after": None,
    }
    assert run["rounds"][0]["tenants"]["tenant-0"]["epsilon_after"] == 1.25
    assert [(c["organization_id"], c["run"]) for c in contributions["items"]] == [
        (str(world.acme), world.run)
    ]
    assert float(contributions["items"][0]["privacy_budget_consumed"]) > 0
    version = versions["items"][0]
    assert (version["id"], version["is_active"], version["deployment_status"]) == (
        world.version_id,
        True,
        "active",
    )
    assert version["lineage"]["run"] == world.run and version["lineage"]["contributing_organizations"] == [
        str(world.acme)
    ]
    assert counts["users_with_consents"] == 3
    assert world.snapshot_users == 2  # the user who withdrew vamn_contribution is out
    assert [(c["consent_type"], c["given"], c["withdrawn"]) for c in counts["counts"]] == [
        ("ai_training", 3, 0),
        ("federated_learning", 3, 0),
        ("vamn_contribution", 2, 1),
    ]
    assert [(s["run"], s["aggregation_round"], s["user_count"]) for s in snapshots["items"]] == [
        (world.run, 1, world.snapshot_users)
    ]
    assert missing.status_code == 404


def test_requests_list_overdue_first_and_process_as_the_cli_does(service: Service, world: World) -> None:
    headers = _headers(service, world, "admin_own")

    # Execute
    listed = service.client.get("/v1/admin/dsr", headers=headers).json()
    overdue = service.client.get("/v1/admin/dsr?overdue=true", headers=headers).json()
    processed = service.client.post(f"/v1/admin/dsr/{world.open_request}/process", json={}, headers=headers)
    again = service.client.post(f"/v1/admin/dsr/{world.open_request}/process", json={}, headers=headers)
    rejected = service.client.post(
        f"/v1/admin/dsr/{world.overdue_request}/process",
        json={"reject_reason": "identity not verified"},
        headers=headers,
    )

    # Assert
    assert [(r["id"], r["overdue"]) for r in listed["items"]] == [
        (world.overdue_request, True),
        (world.open_request, False),
    ]
    assert [r["id"] for r in overdue["items"]] == [world.overdue_request]
    assert processed.status_code == 200, processed.text
    body = processed.json()
    assert (
        body["status"] == "completed"
        and body["response_details"]["export"]["format"] == "accute-data-export/1"
    )
    assert again.status_code == 409
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"


def test_audit_verify_over_http_checks_the_chains(service: Service, world: World) -> None:
    # Execute
    everything = service.client.post("/v1/admin/audit/verify", headers=_headers(service, world, "platform"))
    own = service.client.post("/v1/admin/audit/verify", headers=_headers(service, world, "admin_own"))
    probe = service.client.post(
        f"/v1/admin/audit/verify?organization_id={world.acme}",
        headers=_headers(service, world, "admin_other"),
    )

    # Assert
    assert everything.status_code == 200 and everything.json()["ok"] is True
    assert {c["organization_id"] for c in everything.json()["chains"]} >= {str(world.acme), str(world.baker)}
    assert [c["organization_id"] for c in own.json()["chains"]] == [str(world.acme)]
    assert own.json()["chains"][0]["records"] > 0
    assert probe.status_code == 403


def test_every_admin_response_model_is_in_the_openapi_schema(service: Service) -> None:
    schema = service.client.get("/openapi.json").json()
    admin = {p: ops for p, ops in schema["paths"].items() if p.startswith("/v1/admin/")}
    assert len(admin) == 15
    for path, operations in admin.items():
        for method, operation in operations.items():
            content = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert "$ref" in content or content.get("type") == "array", (path, method)


def test_promote_and_roll_back_change_what_the_cascade_answers_with_at_once(
    service_factory: Callable[..., Service],
) -> None:
    # Prepare: a service that caches the active version for 5 minutes, and a second version.
    service = service_factory(config_cache_ttl_s=300.0)
    world = build_world(service)
    from aggregation.weights_store import WeightsStore
    from schema import registry
    from tests.orchestrator.admin_world import weights

    checksum = WeightsStore(service.services.settings.weights_dir).put(weights(2))
    with transaction(service.engine) as session:
        second = str(
            registry.publish(
                session,
                model_name="digits",
                model_version="2",
                head_type="quantitative",
                weights_checksum=checksum,
            ).id
        )
    headers = _headers(service, world, "platform")
    org = world.acme

    # Execute
    before = service.chat(org, message="net income for q1", agent="luca").json()
    promoted = service.client.post(f"/v1/admin/registry/{second}/promote", headers=headers)
    after = service.chat(org, message="net income for q2", agent="luca").json()
    rolled = service.client.post("/v1/admin/registry/quantitative/rollback", headers=headers)
    back = service.chat(org, message="net income for q3", agent="luca").json()
    twice = service.client.post(f"/v1/admin/registry/{world.version_id}/promote", headers=headers)

    # Assert
    assert before["model_id"] == f"vamn-quantitative:digits@{world.run}.r1"
    assert promoted.status_code == 200 and promoted.json()["is_active"] is True
    assert after["model_id"] == "vamn-quantitative:digits@2"
    assert rolled.status_code == 200 and rolled.json()["id"] == world.version_id
    assert back["model_id"] == f"vamn-quantitative:digits@{world.run}.r1"
    assert twice.status_code == 409
    with transaction(service.engine) as session:
        actions = list(
            session.scalars(
                select(ImmutableAuditLog.action)
                .where(ImmutableAuditLog.action.in_(("registry.promoted", "registry.rolled_back")))
                .order_by(ImmutableAuditLog.id)
            )
        )
    assert actions == ["registry.promoted", "registry.rolled_back"]
