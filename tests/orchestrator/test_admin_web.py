"""The admin console over HTTP: sign-in, the sealed session cookie, CSRF, security headers, scoping,
and the budgets page's numbers against ``accute-fl budget show --json``'s function."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from fastapi.testclient import TestClient

from orchestrator.cli import context
from orchestrator.cli.main import main
from orchestrator.web.render import CONTENT_SECURITY_POLICY
from orchestrator.web.session import COOKIE
from privacy import ledger
from privacy.events import DpSgdEvent
from schema import registry
from schema.db import transaction
from tests.orchestrator.admin_world import build_world
from tests.orchestrator.conftest import Service

MODEL = "fraud_detection"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def sign_in(client: TestClient, token: str) -> None:
    form = client.get("/admin/login")
    csrf = _CSRF.search(form.text)
    assert form.status_code == 200 and csrf is not None
    answer = client.post("/admin/login", data={"token": token, "csrf": csrf.group(1)}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/admin/budgets"


def table(html: str, table_id: str) -> str:
    """The markup of one table of a page (filters and menus elsewhere on it name organizations too)."""
    found = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert found is not None, html
    return found.group(1)


def csrf_of(client: TestClient, path: str) -> str:
    found = _CSRF.search(client.get(path).text)
    assert found is not None
    return found.group(1)


def charge(service: Service, org: uuid.UUID, rounds: int, cap: float | None = None) -> None:
    policy = ledger.LedgerPolicy.from_settings(service.services.settings)
    with transaction(service.engine) as session:
        for number in range(1, rounds + 1):
            ledger.charge(
                session, org, MODEL, DpSgdEvent(1.5, 0.05, 20), aggregation_round=number, policy=policy
            )
        if cap is not None:  # below what is spent: allowed, and the budget reads exhausted
            ledger.set_budget(session, org, MODEL, cap, 1e-5, policy=policy, unit="record")


def test_sign_in_sets_a_sealed_http_only_strict_cookie_and_every_page_has_the_headers(
    service: Service,
) -> None:
    # Prepare
    org = service.org("alpha")
    token = service.token(org, "org_admin")
    client = service.client

    # Execute
    sign_in(client, token)
    cookie_header = next(c for c in client.cookies.jar if c.name == COOKIE)
    pages = [client.get(p) for p in ("/admin/budgets", "/admin/runs", "/admin/registry", "/admin/consent")]
    missing = client.get("/admin/no-such-page")
    css = client.get("/admin/static/admin.css")

    # Assert: the cookie holds no token in the clear; attributes as promised; headers everywhere.
    assert token not in cookie_header.value and token.split(".")[1] not in cookie_header.value
    assert cookie_header.path == "/admin" and cookie_header.has_nonstandard_attr("HttpOnly")
    assert [p.status_code for p in pages] == [200, 200, 200, 200]
    assert missing.status_code == 404 and css.status_code == 200
    for response in [*pages, missing, css]:
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "<script" not in pages[0].text


def test_the_set_cookie_line_says_httponly_samesite_strict_and_secure_over_https(service: Service) -> None:
    # Prepare
    token = service.token(None, "platform_admin")
    plain = service.client
    tls = TestClient(service.client.app, base_url="https://testserver")

    # Execute
    answers = []
    for client in (plain, tls):
        csrf = _CSRF.search(client.get("/admin/login").text)
        assert csrf is not None
        answers.append(
            client.post("/admin/login", data={"token": token, "csrf": csrf.group(1)}, follow_redirects=False)
        )

    # Assert
    lines = [a.headers["set-cookie"] for a in answers]
    session_lines = [
        next(part for part in a.headers.get_list("set-cookie") if part.startswith(COOKIE + "="))
        for a in answers
    ]
    assert all("HttpOnly" in s and "SameSite=strict" in s and "Path=/admin" in s for s in session_lines), (
        lines
    )
    assert "Secure" not in session_lines[0] and "Secure" in session_lines[1]


def test_wrong_tokens_and_roles_cannot_sign_in(service: Service) -> None:
    # Prepare
    org = service.org()
    client = service.client

    # Execute
    csrf = csrf_of(client, "/admin/login")
    garbage = client.post("/admin/login", data={"token": "not-a-token", "csrf": csrf})
    user = client.post("/admin/login", data={"token": service.token(org, "org_user"), "csrf": csrf})
    no_pair = TestClient(client.app).post(
        "/admin/login", data={"token": service.token(org, "org_admin"), "csrf": csrf}
    )
    anonymous = TestClient(client.app).get("/admin/budgets", follow_redirects=False)
    forged = TestClient(client.app, cookies={COOKIE: "1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}).get(
        "/admin/budgets", follow_redirects=False
    )

    # Assert
    assert garbage.status_code == 401 and "not valid" in garbage.text
    assert user.status_code == 403 and COOKIE not in user.cookies
    assert no_pair.status_code == 403  # the sign-in form's CSRF pair is missing
    assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/admin/login")
    assert (forged.status_code, forged.headers["location"]) == (303, "/admin/login")


def test_a_state_changing_form_without_or_with_a_wrong_csrf_token_is_refused(service: Service) -> None:
    # Prepare
    client = service.client
    sign_in(client, service.token(None, "platform_admin"))
    model_id = uuid.uuid4()

    # Execute
    without = client.post(f"/admin/registry/{model_id}/promote", data={}, follow_redirects=False)
    wrong = client.post(
        f"/admin/registry/{model_id}/promote", data={"csrf": "x" * 43}, follow_redirects=False
    )
    logout_without = client.post("/admin/logout", data={}, follow_redirects=False)
    still_in = client.get("/admin/budgets", follow_redirects=False)
    logout = client.post(
        "/admin/logout", data={"csrf": csrf_of(client, "/admin/budgets")}, follow_redirects=False
    )
    after = client.get("/admin/budgets", follow_redirects=False)

    # Assert: refused before anything is looked up (the model does not even exist); logout works with it.
    assert (without.status_code, wrong.status_code, logout_without.status_code) == (403, 403, 403)
    assert "CSRF" in without.text
    assert still_in.status_code == 200
    assert logout.status_code == 303 and after.status_code == 303


def test_budgets_page_equals_budget_show_and_an_org_admin_sees_only_its_own(service: Service) -> None:
    # Prepare: alpha near its cap, beta far from it.
    alpha, beta = service.org("alpha-firm"), service.org("beta-firm")
    charge(service, alpha, 3, cap=0.5)
    charge(service, beta, 1)
    policy = ledger.LedgerPolicy.from_settings(service.services.settings)
    with transaction(service.engine) as session:
        expected = {(r.organization_id, r.unit): r for r in ledger.budget_rows(session, policy=policy)}
    admin = TestClient(service.client.app)
    sign_in(admin, service.token(None, "platform_admin"))
    beta_admin = TestClient(service.client.app)
    sign_in(beta_admin, service.token(beta, "org_admin"))

    # Execute
    everything = table(admin.get("/admin/budgets").text, "budgets")
    exhausted_only = table(admin.get("/admin/budgets", params={"status": "exhausted"}).text, "budgets")
    mine_page = beta_admin.get("/admin/budgets").text
    mine = table(mine_page, "budgets")
    probe = beta_admin.get("/admin/budgets", params={"org": str(alpha)})
    probe_detail = beta_admin.get(f"/admin/budgets/{alpha}/{MODEL}")
    own_detail = beta_admin.get(f"/admin/budgets/{beta}/{MODEL}")
    alerts = table(admin.get("/admin/alerts").text, "alerts")
    beta_alerts = table(beta_admin.get("/admin/alerts").text, "alerts")

    # Assert: the numbers are budget show's, printed to 6 significant digits.
    rows = re.findall(
        r'data-org="([^"]+)" data-model-type="[^"]+" data-unit="([^"]+)">.*?'
        r'class="num epsilon-spent">([^<]+)<.*?class="num epsilon-cap">([^<]+)<.*?class="badge (\w+)"',
        everything,
        re.S,
    )
    assert {(o, u) for o, u, *_ in rows} == set(expected)
    for org_id, unit, spent, cap, status in rows:
        want = expected[(org_id, unit)]
        assert (float(spent), float(cap), status) == (
            float(f"{want.epsilon_spent:.6g}"),
            float(f"{want.epsilon_cap:.6g}"),
            want.status,
        )
    assert expected[(str(alpha), "record")].status == "exhausted"
    assert "alpha-firm" in exhausted_only and "beta-firm" not in exhausted_only
    assert "beta-firm" in mine and "alpha-firm" not in mine_page and str(alpha) not in mine_page
    assert probe.status_code == 403 and probe_detail.status_code == 403
    assert "alpha-firm" in alerts and 'class="badge exhausted"' in alerts
    assert "alpha-firm" not in beta_alerts
    assert own_detail.status_code == 200 and "<svg" in own_detail.text and "cap 8" in own_detail.text


def test_budgets_page_paginates(service: Service) -> None:
    # Prepare: five organizations with one budget each.
    for index in range(5):
        charge(service, service.org(f"firm-{index}"), 1)
    client = service.client
    sign_in(client, service.token(None, "platform_admin"))

    # Execute
    first = client.get("/admin/budgets", params={"limit": 2}).text
    last = client.get("/admin/budgets", params={"limit": 2, "offset": 4}).text

    # Assert
    assert "5 budgets, showing 1\u20132" in first and 'rel="next"' in first and 'rel="prev"' not in first
    assert "5 budgets, showing 5\u20135" in last and 'rel="prev"' in last and 'rel="next"' not in last


def test_the_page_shows_what_budget_show_json_prints(
    service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the CLI pointed at the service's database.
    org = service.org("gamma-firm")
    charge(service, org, 2)
    monkeypatch.setenv("ACCUTE_DATABASE_URL", service.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ACCUTE_KEK_FILE", str(service.services.settings.kek_file))
    context.reset()
    client = service.client
    sign_in(client, service.token(None, "platform_admin"))

    # Execute
    capsys.readouterr()
    code = main(["budget", "show", "--json"])
    shown = json.loads(capsys.readouterr().out)
    context.reset()
    page = client.get("/admin/budgets").text

    # Assert: every row of the CLI is on the page with the same numbers (6 significant digits).
    assert code == 0 and shown
    for row in shown:
        cells = re.search(
            rf'data-org="{row["organization_id"]}" data-model-type="{row["model_type"]}" '
            rf'data-unit="{row["unit"]}">.*?epsilon-spent">([^<]+)<.*?epsilon-cap">([^<]+)<',
            page,
            re.S,
        )
        assert cells is not None, row
        assert cells.groups() == (f"{float(row['epsilon_spent']):.6g}", f"{float(row['epsilon_cap']):.6g}")


def _publish(service: Service, version: str) -> str:
    with transaction(service.engine) as session:
        row = registry.publish(
            session,
            model_name="vamn-q",
            model_version=version,
            head_type="quantitative",
            weights_checksum="0" * 64,
        )
        registry.activate(session, row.id)
        return str(row.id)


def test_promote_and_roll_back_need_a_confirmation_page_a_csrf_token_and_a_platform_admin(
    service: Service,
) -> None:
    # Prepare: version 1 served, then version 2 (1 retired).
    first, second = _publish(service, "1"), _publish(service, "2")
    org = service.org("delta-firm")
    admin = TestClient(service.client.app)
    sign_in(admin, service.token(None, "platform_admin"))
    org_admin = TestClient(service.client.app)
    sign_in(org_admin, service.token(org, "org_admin"))

    # Execute
    confirm = admin.get(f"/admin/registry/{first}/promote")
    token = _CSRF.search(confirm.text)
    assert token is not None
    refused = org_admin.post(
        f"/admin/registry/{first}/promote", data={"csrf": csrf_of(org_admin, "/admin/registry")}
    )
    org_confirm = org_admin.get(f"/admin/registry/{first}/promote")
    promoted = admin.post(
        f"/admin/registry/{first}/promote", data={"csrf": token.group(1)}, follow_redirects=False
    )
    notice = admin.get(promoted.headers["location"]).text
    rollback_confirm = admin.get("/admin/registry/heads/quantitative/rollback")
    rolled = admin.post(
        "/admin/registry/heads/quantitative/rollback",
        data={"csrf": csrf_of(admin, "/admin/registry")},
        follow_redirects=False,
    )

    # Assert
    assert (
        confirm.status_code == 200
        and "Promote vamn-q 1" in confirm.text
        and "serves vamn-q 2 today" in confirm.text
    )
    assert refused.status_code == 403 and org_confirm.status_code == 403
    assert promoted.status_code == 303 and promoted.headers["location"] == f"/admin/registry?promoted={first}"
    assert "vamn-q 1 now serves the quantitative head." in notice
    assert rollback_confirm.status_code == 200
    assert rolled.status_code == 303 and rolled.headers["location"] == f"/admin/registry?rolled_back={second}"
    with transaction(service.engine) as session:
        assert str(registry.active_for_head(session, "quantitative").id) == second  # type: ignore[union-attr]
    assert 'class="button promote"' not in org_admin.get("/admin/registry").text


def test_every_page_shows_the_admin_apis_numbers_for_the_same_data(service: Service) -> None:
    # Prepare: the admin API tests' federation (budgets near and at the cap, a run, a version,
    # consents, an overdue request).
    world = build_world(service)
    api = {"Authorization": f"Bearer {service.token(None, 'platform_admin')}"}
    client = service.client
    sign_in(client, service.token(None, "platform_admin"))

    # Execute
    budgets_api = client.get("/v1/admin/budgets", headers=api).json()["items"]
    budgets_page = table(client.get("/admin/budgets").text, "budgets")
    run_api = client.get(f"/v1/admin/runs/{world.run}", headers=api).json()
    run_page = table(client.get(f"/admin/runs/{world.run}").text, "rounds")
    dsr_api = client.get("/v1/admin/dsr", headers=api).json()["items"]
    consent_page = client.get("/admin/consent").text
    counts_api = client.get(f"/v1/admin/consent/{world.acme}/counts", headers=api).json()
    alerts_api = client.get("/v1/admin/budget-alerts", headers=api).json()
    alerts_page = table(client.get("/admin/alerts").text, "alerts")

    # Assert: budgets, row by row.
    assert budgets_api
    for row in budgets_api:
        cells = re.search(
            rf'data-org="{row["organization_id"]}" data-model-type="{row["model_type"]}" '
            rf'data-unit="{row["unit"]}">.*?epsilon-spent">([^<]+)<.*?epsilon-cap">([^<]+)<.*?class="badge (\w+)"',
            budgets_page,
            re.S,
        )
        assert cells is not None, row
        assert cells.groups() == (
            "inf" if row["epsilon_spent"] == "inf" else f"{row['epsilon_spent']:.6g}",
            f"{row['epsilon_cap']:.6g}",
            row["status"],
        )
    # A run's per-round, per-tenant statuses.
    assert run_api["rounds"] and dsr_api and counts_api["counts"]
    for entry in run_api["rounds"]:
        for tenant, status in entry["tenants"].items():
            cell = re.search(rf'data-round="{entry["round"]}" data-tenant="{tenant}">([a-z_]+)', run_page)
            assert cell is not None and cell.group(1) == status["status"], (entry, tenant)
    # Requests in the API's order (overdue first); consent counts; alerts.
    assert re.findall(r'data-id="([^"]+)"', table(consent_page, "dsrs")) == [r["id"] for r in dsr_api]
    acme_row = re.search(rf'<tr data-org="{world.acme}">(.*?)</tr>', consent_page, re.S)
    assert acme_row is not None
    for count in counts_api["counts"]:
        assert f"{count['given']} / {count['withdrawn']}" in acme_row.group(1)
    assert alerts_page.count('<tr class="status-') == alerts_api["total"] > 0
