"""The security gate in the running service: `accute-fl serve` on loopback, PostgreSQL, Redis.

Requests come from chosen loopback addresses (127.0.0.0/8 is all ours): the client socket is bound
to a source address before it connects, so the server sees it as the ASGI ``client``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, select

from orchestrator.service import build_services
from schema import directory
from schema.db import make_engine, transaction
from schema.migrate import upgrade
from schema.models import SecurityAnomaly, ZeroTrustAccessLog
from tests.conftest import _postgres_schema_url
from tests.orchestrator.conftest import FALLBACK_KEY, make_settings
from tests.orchestrator.fakes import FakeProvider, running, wait_ready
from tests.orchestrator.security.stix_fixtures import bundle_json

SCRIPT = shutil.which("accute-fl") or str(Path(sys.executable).with_name("accute-fl"))
REDIS_URL = os.environ.get("ACCUTE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_unavailable() -> str | None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {REDIS_URL} is unreachable: {exc}"
    return None


@dataclass
class Served:
    base: str
    engine: Engine
    env: dict[str, str]
    token: Callable[..., str]
    org: uuid.UUID
    user: uuid.UUID
    procs: list[subprocess.Popen[str]]

    def client(self, source: str = "127.0.0.1", base: str | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=base or self.base, transport=transport, timeout=30, trust_env=False)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SCRIPT, *args], env=self.env, capture_output=True, text=True, timeout=120)

    def log_rows(self, **where: Any) -> list[ZeroTrustAccessLog]:
        with transaction(self.engine) as session:
            query = select(ZeroTrustAccessLog)
            for name, value in where.items():
                query = query.where(getattr(ZeroTrustAccessLog, name) == value)
            rows = list(session.scalars(query))
            session.expunge_all()
        return rows


def _start(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(procs: list[subprocess.Popen[str]]) -> str:
    output = ""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        output += proc.communicate(timeout=60)[0]
    return output


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module: fast refreshes, an organization with a user, a fake fallback."""
    tmp = tmp_path_factory.mktemp("gate")
    for url in _postgres_schema_url():
        engine = make_engine(url)
        upgrade(engine)
        with running(FakeProvider(api_key=FALLBACK_KEY, reply="fallback answer")) as fallback:
            settings = make_settings(tmp, fallback.url)
            services = build_services(settings, engine)
            with transaction(engine) as session:
                org = directory.create_organization(session, "gated firm").id
                user = directory.create_user(session, org, "ana@gated.example").id
            env = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")} | {
                "ACCUTE_DATABASE_URL": url,
                "ACCUTE_KEK_FILE": str(settings.kek_file),
                "ACCUTE_WEIGHTS_DIR": str(settings.weights_dir),
                "ACCUTE_FALLBACK_PROVIDER": "openai",
                "ACCUTE_FALLBACK_API_ENDPOINT": str(fallback.url),
                "ACCUTE_FALLBACK_API_KEY": FALLBACK_KEY,
                "ACCUTE_FALLBACK_MODEL": "fallback-model",
                "ACCUTE_THREAT_INTEL_REFRESH_S": "0.2",
                "ACCUTE_SECURITY_CONTEXT_REFRESH_S": "0.2",
                "ACCUTE_ZERO_TRUST_LOG_FLUSH_MS": "50",
            }
            port = _free_port()
            procs = [_start(env, port)]
            base = f"http://127.0.0.1:{port}"

            token = partial(_token, services, org)

            try:
                wait_ready(base, procs)
                yield Served(base, engine, env, token, org, user, procs)
            finally:
                output = _stop(procs)
                assert "Traceback" not in output, output
        engine.dispose()


def _token(services: Any, org: uuid.UUID, role: str = "org_admin", subject: str | None = None) -> str:
    return str(services.tokens.issue(role=role, organization_id=org, subject=subject))


def _eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def _chat(client: httpx.Client, served: Served, token: str, **headers: str) -> httpx.Response:
    return client.post(
        f"/v1/orgs/{served.org}/agents/luca/chat",
        json={"message": "What is the VAT rate?"},
        headers={"Authorization": f"Bearer {token}", **headers},
    )


def test_an_allowed_request_writes_an_access_log_row(served: Served) -> None:
    # Prepare
    token = served.token("org_user", subject=str(served.user))

    # Execute
    with served.client("127.0.0.3") as client:
        response = _chat(client, served, token)

    # Assert: answered, and after the batch flush one allow row for the user with its factors.
    assert response.status_code == 200, response.text
    rows = _eventually(lambda: served.log_rows(user_id=served.user, access_decision="allow"))
    assert rows, ("no access-log row after the flush interval", served.log_rows())
    row = rows[0]
    assert row.organization_id == served.org and float(row.trust_score) == 100.0
    assert row.resource_requested == f"POST /v1/orgs/{served.org}/agents/luca/chat"
    assert row.factors_evaluated["address"] == "127.0.0.3" and row.factors_evaluated["role_ok"] is True


def test_a_listed_address_is_denied_and_logged(served: Served, tmp_path: Path) -> None:
    # Prepare: 127.0.0.2 listed by a CSV feed, imported with the CLI.
    feed = tmp_path / "feed.csv"
    feed.write_text(
        "indicator_type,indicator_value,threat_type,severity,source,confidence\n"
        "ip,127.0.0.2,botnet,high,test-feed,90\n"
    )
    imported = served.cli("threat", "import", str(feed), "--json")
    assert imported.returncode == 0, imported.stderr
    token = served.token("org_admin")

    # Execute: the same token from the listed and from another address, on two kinds of route.
    def denied() -> bool:
        with served.client("127.0.0.2") as client:
            return bool(
                client.get(
                    f"/v1/orgs/{served.org}/usage", headers={"Authorization": f"Bearer {token}"}
                ).status_code
                == 403
            )

    assert _eventually(denied), "the listed address was not denied after the refresh interval"
    with served.client("127.0.0.2") as client:
        chat = _chat(client, served, token)
        usage = client.get(f"/v1/orgs/{served.org}/usage", headers={"Authorization": f"Bearer {token}"})
    with served.client("127.0.0.4") as client:
        other = client.get(f"/v1/orgs/{served.org}/usage", headers={"Authorization": f"Bearer {token}"})
    with served.client("127.0.0.1") as client:  # no proxy is trusted by default: the header is ignored
        claimed = client.get(
            f"/v1/orgs/{served.org}/usage",
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "127.0.0.2"},
        )

    # Assert
    assert (chat.status_code, chat.json()) == (403, {"error": "forbidden"})
    assert (usage.status_code, usage.json()) == (403, {"error": "forbidden"})
    assert other.status_code == 200 and claimed.status_code == 200
    rows = _eventually(
        lambda: [
            r
            for r in served.log_rows(access_decision="deny")
            if r.factors_evaluated.get("address") == "127.0.0.2"
        ]
    )
    assert (
        rows and rows[0].factors_evaluated["threat"] == "ip:127.0.0.2" and float(rows[0].trust_score) == 0.0
    )


def test_a_user_whose_email_domain_is_listed_is_denied_with_a_token_issued_before(
    served: Served, tmp_path: Path
) -> None:
    # Prepare: a user and a token issued while nothing listed the address, then a feed that
    # lists the whole mail domain.
    with transaction(served.engine) as session:
        user = directory.create_user(session, served.org, "trudy@leaked-mail.example").id
    token = served.token("org_user", subject=str(user))
    colleague = served.token("org_user", subject=str(served.user))
    feed = tmp_path / "mail.csv"
    feed.write_text(
        "indicator_type,indicator_value,threat_type,severity,source,confidence\n"
        "email,@leaked-mail.example,credential-leak,high,mail-feed,90\n"
    )
    imported = served.cli("threat", "import", str(feed), "--json")
    assert imported.returncode == 0, imported.stderr

    # Execute
    def denied() -> bool:
        with served.client("127.0.0.6") as client:
            return bool(_chat(client, served, token).status_code == 403)

    assert _eventually(denied), "the listed user was not denied after the refresh interval"
    with served.client("127.0.0.6") as client:
        refused = _chat(client, served, token)
        other = _chat(client, served, colleague)

    # Assert: the listed user denied with today's 403 body and logged; the colleague served.
    assert (refused.status_code, refused.json()) == (403, {"error": "forbidden"})
    assert other.status_code == 200, other.text
    rows = _eventually(lambda: served.log_rows(user_id=user, access_decision="deny"))
    assert rows and rows[0].factors_evaluated["threat"] == "email:@leaked-mail.example"


def test_a_listed_cidr_range_and_stix_user_agent_are_denied(served: Served, tmp_path: Path) -> None:
    # Prepare: a CIDR range by CSV, a user agent by a STIX bundle imported twice.
    feed = tmp_path / "ranges.csv"
    feed.write_text(
        "indicator_type,indicator_value,threat_type,severity,source,confidence\n"
        "ip,127.0.10.0/24,scanner,medium,test-feed,70\n"
    )
    bundle = tmp_path / "bundle.json"
    bundle.write_text(bundle_json(address="127.0.0.5", agent="EvilBot/6.6", domain="evil-llm.example"))
    assert served.cli("threat", "import", str(feed)).returncode == 0
    first = served.cli("threat", "import", str(bundle), "--json")
    second = served.cli("threat", "import", str(bundle), "--json")
    token = served.token("org_admin")
    url = f"/v1/orgs/{served.org}/usage"

    # Execute
    def status(source: str, agent: str = "test") -> int:
        with served.client(source) as client:
            return client.get(
                url, headers={"Authorization": f"Bearer {token}", "User-Agent": agent}
            ).status_code

    # Assert: the second import changed nothing; the range and the agent are denied, others not.
    assert '"inserted": 7' in first.stdout and '"unchanged": 7' in second.stdout, (
        first.stdout,
        second.stdout,
    )
    assert _eventually(lambda: status("127.0.10.77") == 403)
    assert status("127.0.11.1") == 200
    assert status("127.0.0.6", agent="EvilBot/6.6") == 403
    assert status("127.0.0.6") == 200
    listed = json.loads(served.cli("threat", "list", "--type", "user_agent", "--json").stdout)
    assert [r["indicator_value"] for r in listed] == ["EvilBot/6.6"]
    kept = json.loads(served.cli("threat", "expire", "--older-than-days", "36500", "--json").stdout)
    assert kept == {"older_than_days": 36500, "expired": 0}


def test_a_listed_provider_domain_is_refused_at_config_creation(served: Served, tmp_path: Path) -> None:
    # Prepare
    feed = tmp_path / "domains.csv"
    feed.write_text(
        "indicator_type,indicator_value,threat_type,severity,source,confidence\n"
        "domain,badllm.example,phishing,high,test-feed,90\n"
    )
    assert served.cli("threat", "import", str(feed)).returncode == 0
    headers = {"Authorization": f"Bearer {served.token('org_admin')}"}
    body = {"provider": "openai", "display_name": "x", "model_id": "gpt", "api_key": "sk-x"}

    # Execute
    def refused() -> httpx.Response | None:
        with served.client() as client:
            response = client.post(
                f"/v1/orgs/{served.org}/llm-configs",
                json={**body, "api_endpoint": "https://api.badllm.example/v1"},
                headers=headers,
            )
        return response if response.status_code == 422 else None

    response = _eventually(refused)
    with served.client() as client:
        fine = client.post(
            f"/v1/orgs/{served.org}/llm-configs",
            # Its own model: an attempt above made before the index refresh saw the feed may have
            # created the first config (the feed takes effect within the refresh interval).
            json={**body, "model_id": "gpt-good", "api_endpoint": "https://api.goodllm.example/v1"},
            headers=headers,
        )

    # Assert
    assert response is not None, "the listed domain was accepted"
    assert "threat intelligence" in response.json()["message"]
    assert fine.status_code == 201, fine.text


def test_a_critical_anomaly_challenges_the_user_with_www_authenticate(served: Served) -> None:
    # Prepare: another user of the organization, with an unresolved critical anomaly.
    with transaction(served.engine) as session:
        user = directory.create_user(session, served.org, f"u{uuid.uuid4().hex[:6]}@gated.example").id
        session.add(
            SecurityAnomaly(
                organization_id=served.org,
                user_id=user,
                anomaly_type="behavioral_mismatch",
                severity="critical",
                details={"why": "test"},
            )
        )
    token = served.token("org_user", subject=str(user))

    # Execute
    def challenged() -> httpx.Response | None:
        with served.client("127.0.0.7") as client:
            response = _chat(client, served, token)
        return response if response.status_code == 401 else None

    response = _eventually(challenged)

    # Assert: 401 naming the challenge; the challenge is in the access log.
    assert response is not None, "no challenge after the context refresh"
    assert response.json() == {"error": "challenge_required"}
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_user_authentication", challenge="mfa"'
    )
    rows = _eventually(lambda: served.log_rows(user_id=user, access_decision="challenge"))
    assert rows and rows[0].challenge_type == "mfa" and float(rows[0].trust_score) == 40.0


def test_two_workers_share_one_redis_rate_limit(served: Served) -> None:
    # Prepare: two more servers (separate processes) on one Redis db, 30 requests a minute per org.
    reason = redis_unavailable()
    if reason is not None:
        pytest.skip(reason)
    prefix = f"accute-test-{uuid.uuid4().hex[:8]}"
    env = served.env | {
        "ACCUTE_REDIS_URL": REDIS_URL,
        "ACCUTE_RATE_LIMIT_KEY_PREFIX": prefix,
        "ACCUTE_RATE_LIMIT_ORG_PER_MINUTE": "30",
    }
    with transaction(served.engine) as session:
        org = directory.create_organization(session, f"limited-{uuid.uuid4().hex[:6]}").id
    services = build_services(make_settings(Path(env["ACCUTE_KEK_FILE"]).parent.parent, None), served.engine)
    token = services.tokens.issue(role="org_admin", organization_id=org)
    ports = [_free_port(), _free_port()]
    procs = [_start(env, port) for port in ports]
    try:
        for port in ports:
            wait_ready(f"http://127.0.0.1:{port}", procs)

        # Execute: 20 requests to each server.
        statuses: list[int] = []
        retry_after: list[str] = []
        for port in ports:
            with served.client("127.0.0.8", base=f"http://127.0.0.1:{port}") as client:
                for _ in range(20):
                    response = client.get(
                        f"/v1/orgs/{org}/usage", headers={"Authorization": f"Bearer {token}"}
                    )
                    statuses.append(response.status_code)
                    if response.status_code == 429:
                        retry_after.append(response.headers["retry-after"])
    finally:
        output = _stop(procs)
        client_redis = redis.Redis.from_url(REDIS_URL)
        for key in client_redis.scan_iter(f"{prefix}*"):
            client_redis.delete(key)

    # Assert: 30 answered in all (not 20 + 20), the rest 429 with a Retry-After within the minute.
    assert statuses.count(200) == 30 and statuses.count(429) == 10, (statuses, output)
    assert statuses[:20] == [200] * 20
    assert all(1 <= int(v) <= 60 for v in retry_after)
