"""The admin console in a real browser: Debian's Chromium driven by Playwright against
``accute-fl serve`` on loopback, after a small governed simulation wrote the ledger, the runs and
the registry through the product's own code paths.

Outside CI a missing ``/usr/bin/chromium`` (or Playwright) skips with the reason; in CI (``CI=true``)
it fails, and ``scripts/test.sh`` installs Chromium there. Screenshots of every page go to
``$ACCUTE_TEST_ARTIFACTS`` (default: the test's tmp folder); the test prints where.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from orchestrator.service import build_services
from privacy import ledger
from schema import directory, registry_views
from schema.config import Settings
from schema.db import make_engine, transaction
from schema.migrate import upgrade
from simulations.runner import simulate
from simulations.scenario import SimulationSpec
from tests.conftest import IN_CI
from tests.orchestrator.conftest import FALLBACK_KEY
from tests.orchestrator.fakes import FakeProvider, running, wait_ready
from tests.simulations.conftest import in_process

CHROMIUM = Path("/usr/bin/chromium")
SCRIPT = shutil.which("accute-fl") or str(Path(sys.executable).with_name("accute-fl"))
#: The checkout under test (first on the server's path, ahead of whichever checkout is installed).
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _require_browser() -> Any:
    """Playwright's sync API, or a skip (outside CI) / failure (in CI) saying what is missing."""
    reason = None
    try:
        from playwright import sync_api
    except ImportError as exc:
        reason = f"Playwright is not installed ({exc}); pip install playwright"
    if reason is None and not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; apt-get install chromium (scripts/test.sh does in CI)"
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason} (CI must run the browser tests)")
        pytest.skip(reason)
    return sync_api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("ACCUTE_TEST_ARTIFACTS") or tmp_path / "artifacts") / "admin-console"
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Engine, Settings]]:
    """A migrated SQLite database and the settings the simulation and the server share."""
    url = f"sqlite:///{tmp_path / 'accute.db'}"
    engine = make_engine(url)
    upgrade(engine)
    settings = Settings(
        database_url=url,
        kek_file=tmp_path / "state" / "kek.json",
        weights_dir=tmp_path / "weights",
    )
    yield engine, settings
    engine.dispose()


@pytest.fixture
def server(world: tuple[Engine, Settings]) -> Iterator[str]:
    """``accute-fl serve`` on a loopback port, with a fake fallback provider; its base URL."""
    _, settings = world
    with running(FakeProvider(api_key=FALLBACK_KEY, reply="fallback answer")) as fallback:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")} | {
            "ACCUTE_DATABASE_URL": settings.database_url,
            "ACCUTE_KEK_FILE": str(settings.kek_file),
            "ACCUTE_WEIGHTS_DIR": str(settings.weights_dir),
            "ACCUTE_FALLBACK_PROVIDER": "openai",
            "ACCUTE_FALLBACK_API_ENDPOINT": str(fallback.url),
            "ACCUTE_FALLBACK_API_KEY": FALLBACK_KEY,
            "ACCUTE_FALLBACK_MODEL": "fallback-model",
            "ACCUTE_EGRESS_ALLOW": "127.0.0.1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        process = subprocess.Popen(
            [SCRIPT, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, [process], seconds=60)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=60)
            assert "Traceback" not in output, output


def _simulate(settings: Settings, out: Path, name: str) -> None:
    spec = SimulationSpec(
        run_name=name, out=str(out / name), rounds=2, tenants=3, steps=10, sample_rate=0.1, lr=0.5, dp="local"
    )
    simulate(spec, settings, executor=in_process, baseline=False)


def _chat(base: str, org: str, token: str) -> dict[str, Any]:
    answer = httpx.post(
        f"{base}/v1/orgs/{org}/agents/luca/chat",
        json={"message": "net income for q3"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        trust_env=False,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_an_admin_signs_in_reviews_budgets_and_runs_promotes_a_version_and_an_org_admin_sees_its_own(
    world: tuple[Engine, Settings],
    server: str,
    tmp_path: Path,
    artifacts: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sync_api = _require_browser()
    engine, settings = world

    # Prepare: two governed runs over the same three tenants (each publishes a registry version).
    _simulate(settings, tmp_path, "first")
    _simulate(settings, tmp_path, "second")
    services = build_services(settings, engine)
    policy = ledger.LedgerPolicy.from_settings(settings)
    with transaction(engine) as session:
        budgets = ledger.budget_rows(session, policy=policy)
        organizations = {o.name: str(o.id) for o in directory.list_organizations(session)}
        versions = registry_views.list_versions(session, head_type="quantitative").items
    assert budgets and len(versions) == 2
    target = next(v for v in versions if not v.is_active)
    tenant0 = next(v for k, v in organizations.items() if k.endswith("tenant-0"))
    tenant1_name = next(k for k in organizations if k.endswith("tenant-1"))
    platform_token = services.tokens.issue(role="platform_admin", organization_id=None, ttl_s=3600)
    org_admin_token = services.tokens.issue(role="org_admin", organization_id=tenant0, ttl_s=3600)
    chat_token = services.tokens.issue(role="org_user", organization_id=tenant0, ttl_s=3600)
    shots: list[Path] = []

    before = _chat(server, tenant0, chat_token)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            admin = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()

            def shot(page: Any, name: str) -> None:
                path = artifacts / f"{len(shots) + 1:02d}-{name}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)

            # Execute / Assert: sign in with the token in the form body.
            admin.goto(f"{server}/admin/login")
            shot(admin, "login")
            admin.fill("#token", platform_token)
            admin.click("#sign-in")
            admin.wait_for_url(f"{server}/admin/budgets")
            assert platform_token not in admin.url
            rows = admin.locator("#budgets tbody tr")
            assert rows.count() == len(budgets)
            assert admin.locator("#budget-count").inner_text().startswith(f"{len(budgets)} budget")
            shot(admin, "budgets")

            # One tenant's chart: the ε curve and the cap.
            admin.locator(f'#budgets tr[data-org="{tenant0}"] a').first.click()
            admin.wait_for_url(re.compile(rf".*/admin/budgets/{tenant0}/digits$"))
            assert admin.locator("svg.chart polyline.series").count() >= 1
            assert admin.locator("svg.chart line.reference").count() >= 1
            assert admin.locator("#events tbody tr").count() == 4  # two runs x two rounds
            shot(admin, "budget-chart")

            # Runs and one run's rounds with its metric curve.
            admin.goto(f"{server}/admin/runs")
            assert admin.locator("#runs tbody tr").count() == 2
            shot(admin, "runs")
            admin.click("text=second")
            admin.wait_for_url(f"{server}/admin/runs/second")
            assert admin.locator("#rounds tbody tr").count() == 2
            assert admin.locator("svg.chart polyline.series").count() == 1
            shot(admin, "run")

            # Registry: a promotion whose form lost its CSRF token is refused...
            admin.goto(f"{server}/admin/registry")
            shot(admin, "registry")
            admin.goto(f"{server}/admin/registry/{target.id}/promote")
            shot(admin, "promote-confirm")
            admin.locator('form.confirm input[name="csrf"]').evaluate("e => e.remove()")
            admin.click("#confirm")
            assert "CSRF" in admin.locator("p.error").inner_text()
            shot(admin, "csrf-refused")
            with transaction(engine) as session:
                active = registry_views.list_versions(session, status="active").items
            assert target.id not in {v.id for v in active}

            # ... and with it, the version is promoted and the cascade answers with it.
            admin.goto(f"{server}/admin/registry/{target.id}/promote")
            admin.click("#confirm")
            admin.wait_for_url(f"{server}/admin/registry?promoted={target.id}")
            assert target.model_version in admin.locator("p.notice").inner_text()
            shot(admin, "registry-promoted")
            expected_model = f"vamn-quantitative:{target.model_name}@{target.model_version}"
            deadline = time.monotonic() + 15  # the cascade re-reads the registry every few seconds
            after = _chat(server, tenant0, chat_token)
            while after["model_id"] != expected_model and time.monotonic() < deadline:
                time.sleep(0.5)
                after = _chat(server, tenant0, chat_token)
            assert (after["provider"], after["model_id"]) == ("vamn", expected_model), (before, after)

            admin.goto(f"{server}/admin/consent")
            shot(admin, "consent")
            admin.goto(f"{server}/admin/alerts")
            shot(admin, "alerts")

            # An org admin sees its own organization only, and a probe of another is refused.
            own = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            own.goto(f"{server}/admin/login")
            own.fill("#token", org_admin_token)
            own.click("#sign-in")
            own.wait_for_url(f"{server}/admin/budgets")
            orgs_shown = set(
                own.locator("#budgets tbody tr").evaluate_all("rows => rows.map(r => r.dataset.org)")
            )
            assert orgs_shown == {tenant0}
            assert tenant1_name not in own.content()
            shot(own, "org-admin-budgets")
            other = organizations[tenant1_name]
            denied = own.goto(f"{server}/admin/budgets/{other}/digits")
            assert denied is not None and denied.status == 403
            assert own.locator("a.promote").count() == 0
        finally:
            browser.close()
    with capsys.disabled():  # shown even when pytest captures output
        print(f"\nadmin console screenshots: {artifacts}")
    assert all(p.stat().st_size > 0 for p in shots)
