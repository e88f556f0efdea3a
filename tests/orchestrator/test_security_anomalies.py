"""Anomaly detection against the running service (uvicorn on loopback), on SQLite and PostgreSQL.

Clients bind their source address (127.0.0.2 plays the attacker, 127.0.0.1 the honest user), so
the service sees real peer addresses. Time-based detectors run on an injected clock (the monitor's
``clock``), so a 40-minute baseline takes a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from orchestrator.security.anomalies import SecurityMonitor
from orchestrator.service import Services, create_app
from schema import directory
from schema.db import transaction
from schema.models import ImmutableAuditLog, SecurityAnomaly
from tests.orchestrator.conftest import make_settings
from tests.orchestrator.fakes import FakeProvider, running_app

ATTACKER = "127.0.0.2"
HONEST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    base: str
    services: Services
    engine: Engine
    clock: Clock

    @property
    def monitor(self) -> SecurityMonitor:
        assert self.services.security is not None
        return self.services.security

    def client(self, address: str = HONEST) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=self.base, transport=transport, trust_env=False, timeout=30)

    def org(self) -> uuid.UUID:
        with transaction(self.engine) as session:
            return directory.create_organization(session, f"firm-{uuid.uuid4().hex[:8]}").id

    def user(self, org: uuid.UUID) -> uuid.UUID:
        with transaction(self.engine) as session:
            return directory.create_user(session, org, f"u{uuid.uuid4().hex[:8]}@example.com").id

    def headers(
        self, org: uuid.UUID | None, role: str = "org_admin", subject: str | None = None
    ) -> dict[str, str]:
        token = self.services.tokens.issue(role=role, organization_id=org, subject=subject)
        return {"Authorization": f"Bearer {token}"}

    def anomalies(self, anomaly_type: str | None = None) -> list[SecurityAnomaly]:
        assert self.monitor.recorder is not None and self.monitor.recorder.flush()
        with transaction(self.engine) as session:
            query = select(SecurityAnomaly).order_by(SecurityAnomaly.created_at)
            if anomaly_type is not None:
                query = query.where(SecurityAnomaly.anomaly_type == anomaly_type)
            rows = list(session.scalars(query))
            for row in rows:
                session.expunge(row)
        return rows


@pytest.fixture
def serve(engine: Engine, tmp_path: Path, fallback: FakeProvider) -> Iterator[Any]:
    started: list[Any] = []

    def start(**overrides: Any) -> Served:
        settings = make_settings(tmp_path, fallback.url, **overrides)
        app = create_app(settings, engine)
        clock = Clock()
        assert app.state.services.security is not None
        app.state.services.security.clock = clock
        context = running_app(app)
        base = context.__enter__()
        started.append(context)
        return Served(base, app.state.services, engine, clock)

    yield start
    for context in reversed(started):
        context.__exit__(None, None, None)


def test_a_burst_of_bad_tokens_raises_credential_stuffing_and_blocks_that_address_only(serve: Any) -> None:
    # Prepare: an organization with a valid admin token for the honest client. The zero-trust
    # gate is off: it reads the block from the table on real time (within the change poll), and
    # this test moves only the detector's clock to see the block end.
    served = serve(zero_trust_enabled=False)
    org = served.org()
    good = served.headers(org)
    bad = {"Authorization": "Bearer not-a-token"}
    with served.client(ATTACKER) as attacker, served.client(HONEST) as honest:
        # Execute: 20 bad tokens within a minute from 127.0.0.2, then one more, then a valid token.
        answers = [attacker.get(f"/v1/orgs/{org}/usage", headers=bad).status_code for _ in range(20)]
        blocked_bad = attacker.get(f"/v1/orgs/{org}/usage", headers=bad)
        blocked_good = attacker.get(f"/v1/orgs/{org}/usage", headers=good)
        honest_good = honest.get(f"/v1/orgs/{org}/usage", headers=good)
        honest_bad = honest.get(f"/v1/orgs/{org}/usage", headers=bad)

    # Assert: 401 until the threshold, then 403 for that address whatever its token; 127.0.0.1 is unaffected.
    assert answers == [401] * 20
    assert blocked_bad.status_code == 403 and blocked_bad.json() == {"error": "forbidden"}
    assert blocked_good.status_code == 403
    assert honest_good.status_code == 200 and honest_bad.status_code == 401
    (row,) = served.anomalies("credential_stuffing")
    assert row.severity == "high" and row.auto_blocked
    assert row.details["subject"] == f"address:{ATTACKER}" and row.details["address"] == ATTACKER
    assert row.details["failures_in_window"] == 20 and row.details["blocked_until"]
    assert row.organization_id == uuid.UUID(int=0)
    assert served.monitor.is_blocked(address=ATTACKER) and not served.monitor.is_blocked(address=HONEST)
    # The block ends after block_s (15 minutes by default).
    served.clock.now += 901
    with served.client(ATTACKER) as attacker:
        assert attacker.get(f"/v1/orgs/{org}/usage", headers=good).status_code == 200


def test_another_organizations_token_raises_privilege_escalation(serve: Any) -> None:
    # Prepare: two organizations; A's admin and A's plain user.
    served = serve()
    org_a, org_b = served.org(), served.org()
    with served.client(ATTACKER) as client:
        # Execute: A's admin reads B's usage; A's user reads A's admin route.
        cross = client.get(f"/v1/orgs/{org_b}/usage", headers=served.headers(org_a))
        lower = client.get(f"/v1/orgs/{org_a}/usage", headers=served.headers(org_a, "org_user"))

    # Assert: the same 403 as before, and one row per probing token, under A's organization.
    assert cross.status_code == 403 and cross.json() == {"error": "forbidden"}
    assert lower.status_code == 403
    rows = served.anomalies("privilege_escalation")
    by_kind = {r.details["kind"]: r for r in rows}
    assert set(by_kind) == {"cross_organization", "missing_role"}
    assert by_kind["cross_organization"].severity == "high"
    assert by_kind["cross_organization"].details["target_organization_id"] == str(org_b)
    assert by_kind["cross_organization"].organization_id == org_a
    assert by_kind["cross_organization"].details["address"] == ATTACKER
    assert by_kind["missing_role"].severity == "medium"
    assert not any(r.auto_blocked for r in rows)


def test_repeated_probes_block_the_token_subject(serve: Any) -> None:
    # Prepare
    served = serve()
    org_a, org_b = served.org(), served.org()
    headers = served.headers(org_a, subject="prober")
    with served.client() as client:
        # Execute: 10 probes of B (the threshold), then A's own route with the same subject.
        probes = [client.get(f"/v1/orgs/{org_b}/usage", headers=headers).status_code for _ in range(10)]
        own = client.get(f"/v1/orgs/{org_a}/usage", headers=headers)
        other = client.get(f"/v1/orgs/{org_a}/usage", headers=served.headers(org_a))

    # Assert: one deduplicated row, count 10, auto-blocked; the subject is refused, others are not.
    assert probes == [403] * 10
    assert own.status_code == 403 and other.status_code == 200
    (row,) = served.anomalies("privilege_escalation")
    assert row.details["count"] == 10 and row.auto_blocked and row.details["subject"] == "principal:prober"


def test_a_spike_raises_volume_spike_and_steady_traffic_does_not(serve: Any) -> None:
    # Prepare: 40 minutes of 5 requests a minute from one organization (past the 30-minute warm-up).
    served = serve()
    org = served.org()
    headers = served.headers(org)
    with served.client() as client:
        for _ in range(40):
            for _ in range(5):
                assert client.get(f"/v1/orgs/{org}/llm-configs", headers=headers).status_code == 200
            served.clock.now += 60
        steady = served.anomalies("volume_spike")

        # Execute: 40 requests within the next minute.
        for _ in range(40):
            assert client.get(f"/v1/orgs/{org}/llm-configs", headers=headers).status_code == 200

    # Assert: nothing during the steady traffic, one volume_spike once the minute passed its limit.
    assert steady == []
    (row,) = served.anomalies("volume_spike")
    assert row.organization_id == org and row.severity == "medium" and not row.auto_blocked
    assert row.details["baseline_median"] == 5 and row.details["limit"] == 30
    assert row.details["requests_this_minute"] == 31


def test_unusual_read_volume_raises_data_exfiltration(serve: Any, tmp_path: Path) -> None:
    # Prepare: a policy with a small threshold (5 sensitive reads an hour).
    policy = tmp_path / "policy.toml"
    policy.write_text("[data_exfiltration]\nthreshold = 5\n")
    served = serve(anomaly_policy_file=policy)
    org = served.org()
    headers = served.headers(org, subject="reader")
    with served.client() as client:
        # Execute: 4 reads (fine), then a 5th.
        for _ in range(4):
            client.get(f"/v1/orgs/{org}/usage", headers=headers)
        before = served.anomalies("data_exfiltration")
        client.get(f"/v1/orgs/{org}/billing", headers=headers)

    # Assert
    assert before == []
    (row,) = served.anomalies("data_exfiltration")
    assert row.details["subject"] == "principal:reader" and row.details["reads_in_window"] == 5
    assert row.details["kind"] == "billing" and row.organization_id == org


def test_admins_review_and_resolve_anomalies_and_the_block_ends(serve: Any) -> None:
    # Prepare: a blocked address (credential stuffing) and a cross-organization probe by A.
    served = serve()
    org_a, org_b = served.org(), served.org()
    bad = {"Authorization": "Bearer nope"}
    with served.client(ATTACKER) as attacker, served.client(HONEST) as honest:
        for _ in range(20):
            attacker.get(f"/v1/orgs/{org_a}/usage", headers=bad)
        honest.get(f"/v1/orgs/{org_b}/usage", headers=served.headers(org_a))
    stuffing = served.anomalies("credential_stuffing")[0]
    probe = served.anomalies("privilege_escalation")[0]
    platform = served.headers(None, "platform_admin")

    with served.client() as client:
        # Execute: list as the platform and as each organization's admin; resolve.
        everything = client.get("/v1/security/anomalies", headers=platform).json()
        mine = client.get("/v1/security/anomalies", headers=served.headers(org_a)).json()
        theirs = client.get("/v1/security/anomalies", headers=served.headers(org_b)).json()
        hidden = client.get(f"/v1/security/anomalies/{probe.id}", headers=served.headers(org_b))
        user_list = client.get("/v1/security/anomalies", headers=served.headers(org_a, "org_user"))
        resolved = client.post(
            f"/v1/security/anomalies/{probe.id}/resolve",
            json={"resolution": "confirmed_misuse"},
            headers=served.headers(org_a, subject="alice"),
        )
        again = client.post(
            f"/v1/security/anomalies/{probe.id}/resolve", json={"resolution": "x"}, headers=platform
        )
        unblocked = client.post(
            f"/v1/security/anomalies/{stuffing.id}/resolve",
            json={"resolution": "false_positive"},
            headers=platform,
        )
        open_now = client.get("/v1/security/anomalies", headers=platform).json()
        closed = client.get("/v1/security/anomalies?status=resolved", headers=platform).json()
    with served.client(ATTACKER) as attacker:
        after = attacker.get(f"/v1/orgs/{org_a}/usage", headers=served.headers(org_a))

    # Assert
    assert {r["id"] for r in everything} == {str(stuffing.id), str(probe.id)}
    assert [r["id"] for r in mine] == [str(probe.id)] and theirs == []
    assert hidden.status_code == 404 and user_list.status_code == 403
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert body["status"] == "resolved" and body["resolution"] == "confirmed_misuse"
    assert body["details"]["reviewer"] == "alice" and body["reviewed_at"]
    assert again.status_code == 409
    assert unblocked.status_code == 200 and after.status_code == 200
    # Left open: the plain user's attempt at the admin list was itself a (missing role) probe.
    assert [r["details"]["kind"] for r in open_now] == ["missing_role"] and len(closed) == 2
    with transaction(served.engine) as session:
        actions = list(
            session.scalars(
                select(ImmutableAuditLog.action).where(ImmutableAuditLog.resource_type == "security_anomaly")
            )
        )
    assert sorted(actions) == sorted(["security.anomaly_detected"] * 3 + ["security.anomaly_resolved"] * 2)


def test_cli_lists_and_resolves(serve: Any, engine: Engine, tmp_path: Path) -> None:
    # Prepare: one anomaly (a cross-organization probe).
    served = serve()
    org_a, org_b = served.org(), served.org()
    with served.client() as client:
        client.get(f"/v1/orgs/{org_b}/usage", headers=served.headers(org_a))
    (probe,) = served.anomalies("privilege_escalation")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")} | {
        "ACCUTE_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "PYTHONPATH": str(ROOT),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # ``python -m`` of this checkout (the installed script may belong to another checkout).
        command = [sys.executable, "-m", "orchestrator.cli.main", "security", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)

    # Execute
    listed = cli("anomalies", "--json")
    resolved = cli("resolve", str(probe.id), "--resolution", "false_positive", "--by", "ops-oncall", "--json")
    missing = cli("resolve", str(uuid.uuid4()), "--resolution", "x", "--by", "ops")
    too_long = cli("resolve", str(probe.id), "--resolution", "x" * 51, "--by", "ops")
    closed = cli("anomalies", "--status", "resolved", "--json")

    # Assert
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [str(probe.id)]
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(resolved.stdout)["details"]["reviewer"] == "ops-oncall"
    assert missing.returncode == 3 and too_long.returncode == 2
    assert [r["resolution"] for r in json.loads(closed.stdout)] == ["false_positive"]


def test_a_burst_of_fallback_tokens_raises_api_abuse(serve: Any, tmp_path: Path) -> None:
    # Prepare: a lower token floor (each fallback answer here is 30 tokens); 40 minutes of one chat a minute.
    policy = tmp_path / "policy.toml"
    policy.write_text("[api_abuse]\nmin_count = 100\n")
    served = serve(anomaly_policy_file=policy)
    org = served.org()
    headers = served.headers(org, "org_user")
    url = f"/v1/orgs/{org}/agents/luca/chat"
    with served.client() as client:
        for minute in range(40):
            answer = client.post(url, json={"message": f"q{minute}"}, headers=headers)
            assert answer.status_code == 200 and answer.json()["is_fallback"]
            served.clock.now += 60
        steady = served.anomalies("api_abuse")

        # Execute: 10 fallback answers within one minute.
        for i in range(10):
            assert client.post(url, json={"message": f"burst {i}"}, headers=headers).status_code == 200

    # Assert: none while steady; one api_abuse row with the evidence once 100 tokens were passed.
    assert steady == []
    (row,) = served.anomalies("api_abuse")
    assert row.organization_id == org and row.severity == "high"
    assert row.details["baseline_median"] == 30 and row.details["fallback_tokens_this_minute"] == 120


def test_activity_at_an_unusual_hour_raises_time_anomaly(engine: Engine) -> None:
    # Prepare: the monitor with its recorder on a real database; 2 000 requests on working hours.
    from orchestrator.auth import Principal
    from orchestrator.security.anomalies import AnomalyRecorder
    from schema.anomaly_policy import load_policy

    with transaction(engine) as session:
        org = directory.create_organization(session, "nine-to-five").id
    clock = Clock(start=1_800_000_000.0 - 1_800_000_000.0 % 86_400)  # a midnight UTC
    recorder = AnomalyRecorder(engine)
    monitor = SecurityMonitor(load_policy(), recorder, clock=clock)
    who = Principal("clerk", org, frozenset({"org_user"}))
    for i in range(2000):
        clock.now = clock.now - clock.now % 86_400 + (9 + i % 8) * 3600 + i % 3600
        monitor.request_seen(who, "127.0.0.1")

    # Execute: a request at 03:00 UTC the next day.
    clock.now = clock.now - clock.now % 86_400 + 86_400 + 3 * 3600
    monitor.request_seen(who, "127.0.0.1")

    # Assert
    assert recorder.flush()
    recorder.close()
    with transaction(engine) as session:
        (row,) = session.scalars(
            select(SecurityAnomaly).where(SecurityAnomaly.anomaly_type == "time_anomaly")
        )
        assert row.organization_id == org and row.severity == "low"
        assert row.details["hour_utc"] == 3 and row.details["usual_share_of_hour"] == 0


def test_a_policy_file_with_a_mistake_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    from schema.anomaly_policy import load_policy
    from schema.errors import ConfigurationError

    cases = {
        "[credential_stuffing]\nthreshhold = 5\n": "unknown key",
        "[no_such_rule]\n": "unknown detector",
        "[credential_stuffing]\nseverity = 'urgent'\n": "severity must be one of",
        "[credential_stuffing]\nblock_s = -1\n": "block_s must be a number",
        "not toml = [": "not valid TOML",
    }
    for text, message in cases.items():
        path = tmp_path / "policy.toml"
        path.write_text(text)
        with pytest.raises(ConfigurationError, match=message):
            load_policy(path)
    path.write_text("[credential_stuffing]\nthreshold = 5\nblock_s = 60\n")
    rule = load_policy(path).rule("credential_stuffing")
    assert rule.threshold == 5 and rule.block_s == 60 and rule.auto_block


def test_a_new_worker_keeps_refusing_an_address_another_blocked(serve: Any) -> None:
    # Prepare: the first service blocks 127.0.0.2 (a burst of bad tokens) and writes the row.
    first = serve()
    org = first.org()
    with first.client(ATTACKER) as attacker:
        for _ in range(20):
            attacker.get(f"/v1/orgs/{org}/usage", headers={"Authorization": "Bearer bad"})
    first.anomalies("credential_stuffing")  # flushed

    # Execute: a second service on the same database (a restart, or another worker).
    second = serve()
    with second.client(ATTACKER) as attacker, second.client(HONEST) as honest:
        refused = attacker.get(f"/v1/orgs/{org}/usage", headers=second.headers(org))
        allowed = honest.get(f"/v1/orgs/{org}/usage", headers=second.headers(org))

    # Assert
    assert refused.status_code == 403 and allowed.status_code == 200
