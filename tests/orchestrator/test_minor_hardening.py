"""The issue's minor findings: forged kids, logged tracebacks, /readyz leaks, tpm under concurrency,
circuits after a fix, loose KEK modes, OpenAPI errors, agent listing."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from orchestrator.keys import LocalFileKek
from orchestrator.limits import RateLimiter
from orchestrator.service import _Unexpected, create_app
from schema.errors import ConfigurationError
from tests.orchestrator.conftest import Service, make_settings
from tests.orchestrator.fakes import FakeProvider


def _forged(kid: str) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT', 'kid': kid})}.{part({'sub': 'x'})}.c2ln"


def test_forged_kids_are_401_and_do_not_cost_a_query_each(service_factory: Callable[..., Service]) -> None:
    # Prepare: count the statements that look up signing keys. The anomaly detectors are off: 82
    # bad tokens from one address would (rightly) get it blocked as credential stuffing after 20
    # (tests/orchestrator/test_security_anomalies.py); this test is about the token check alone.
    service = service_factory(anomaly_detection=False)
    org = service.org()
    lookups: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "service_signing_keys" in statement:
            lookups.append(statement)

    sa.event.listen(service.engine, "before_cursor_execute", count)
    url = f"/v1/orgs/{org}/llm-configs"
    try:
        # Execute
        nul_kid = _forged("a\x00b")
        nul = service.client.get(url, headers={"Authorization": f"Bearer {nul_kid}"})
        huge = service.client.get(url, headers={"Authorization": f"Bearer {_forged('k' * 5000)}"})
        random_kids = [
            service.client.get(url, headers={"Authorization": f"Bearer {_forged(uuid.uuid4().hex)}"})
            for _ in range(60)
        ]
        repeated = [
            service.client.get(url, headers={"Authorization": f"Bearer {_forged('0' * 32)}"})
            for _ in range(20)
        ]
    finally:
        sa.event.remove(service.engine, "before_cursor_execute", count)

    # Assert
    assert nul.status_code == huge.status_code == 401
    assert {r.status_code for r in random_kids + repeated} == {401}
    assert len(lookups) <= 25  # 20 per second at most for new kids, the repeated one once


def test_an_unexpected_error_is_one_line_without_traceback_unless_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: an app (the routes inside the middleware) that fails with a secret in its exception.
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("SELECT ... parameters: ('a tenant answer',)")

    for debug in (False, True):
        caplog.clear()
        client = TestClient(_Unexpected(inner, debug=debug), raise_server_exceptions=True)

        # Execute
        with caplog.at_level(logging.ERROR, logger="accute.orchestrator"):
            response = client.get("/boom")

        # Assert
        assert (response.status_code, response.json()) == (500, {"error": "internal"})
        records = [r for r in caplog.records if r.name == "accute.orchestrator"]
        assert len(records) == 1 and "a tenant answer" not in records[0].getMessage()
        assert bool(records[0].exc_info) is debug


def test_readyz_does_not_show_the_database_url(tmp_path: Path) -> None:
    engine = sa.create_engine("postgresql+psycopg://scott:tiger-pw@127.0.0.1:1/secretdb")
    app = create_app(make_settings(tmp_path, None), engine)
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert all(s not in response.text for s in ("127.0.0.1", "secretdb", "scott", "tiger"))


def test_tpm_holds_under_concurrency_and_counts_max_tokens() -> None:
    # Prepare: 1000 tokens a minute; each request may use 100 (words + max_tokens).
    limiter = RateLimiter()
    config = uuid.uuid4()
    granted: list[bool] = []
    start = threading.Barrier(50)

    def one() -> None:
        start.wait()
        granted.append(limiter.try_acquire(config, None, 1000, 100))

    # Execute: 50 at once, none has answered yet.
    threads = [threading.Thread(target=one) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Assert: at most 10 fit; settling to the tokens used frees the rest of their reservation.
    assert granted.count(True) == 10
    for _ in range(10):
        limiter.settle(config, 100, 30)
    assert limiter.try_acquire(config, None, 1000, 100) is True  # 300 used + 100 <= 1000


def test_a_circuit_closes_when_the_admin_fixes_the_endpoint(
    service_factory: Callable[..., Service], provider_factory: Callable[..., FakeProvider]
) -> None:
    # Prepare: a broken provider opens the circuit (threshold 1, long cooldown).
    broken = provider_factory(always_status=500)
    fixed = provider_factory(reply="fixed")
    service = service_factory(circuit_failure_threshold=1, circuit_cooldown_s=600, retry_max_attempts=1)
    org = service.org()
    config = service.add_config(org, provider="custom", api_endpoint=broken.url)
    assert service.chat(org).json()["is_fallback"] is True

    # Execute
    patched = service.client.patch(
        f"/v1/orgs/{org}/llm-configs/{config['id']}",
        json={"api_endpoint": fixed.url},
        headers=service.headers(org),
    )
    after = service.chat(org)

    # Assert
    assert patched.status_code == 200
    assert after.json()["content"] == "fixed" and after.json()["is_fallback"] is False


def test_a_kek_file_or_folder_with_loose_modes_is_refused(tmp_path: Path) -> None:
    # Prepare: a KEK created properly, then loosened.
    folder = tmp_path / "kek"
    kek = LocalFileKek(folder / "kek.json")
    kek.current_version()
    os.chmod(folder / "kek.json", 0o644)

    # Execute / Assert
    with pytest.raises(ConfigurationError, match="chmod 600"):
        LocalFileKek(folder / "kek.json").current_version()
    os.chmod(folder / "kek.json", 0o600)
    os.chmod(folder, 0o777)
    with pytest.raises(ConfigurationError, match="chmod 700"):
        LocalFileKek(folder / "kek.json").current_version()
    os.chmod(folder, 0o700)
    assert LocalFileKek(folder / "kek.json").current_version() == "1"


def test_openapi_documents_errors_and_404_does_not_list_agents(service: Service) -> None:
    schema = service.client.get("/openapi.json").json()
    chat = schema["paths"]["/v1/orgs/{org}/agents/{agent_slug}/chat"]["post"]["responses"]
    configs = schema["paths"]["/v1/orgs/{org}/llm-configs"]["get"]["responses"]
    org = service.org()

    missing = service.chat(org, agent="no-such-agent")

    assert {"401", "403", "404"} <= set(chat) and {"401", "403"} <= set(configs)
    assert missing.status_code == 404 and "luca" not in missing.text


def test_usage_rows_name_the_user_a_token_speaks_for(service: Service) -> None:
    # Prepare: a user of the organization, and a token whose subject is that user's id.
    from schema import directory
    from schema.db import transaction
    from schema.models import LlmUsageLog

    org, other = service.org(), service.org()
    with transaction(service.engine) as session:
        user = directory.create_user(session, org, f"{uuid.uuid4().hex[:6]}@firm.test").id
        stranger = directory.create_user(session, other, f"{uuid.uuid4().hex[:6]}@other.test").id
    url = f"/v1/orgs/{org}/agents/luca/chat"

    def chat(subject: str) -> int:
        token = service.services.tokens.issue(role="org_user", organization_id=org, subject=subject)
        return service.client.post(
            url, json={"message": f"hi {subject}"}, headers={"Authorization": f"Bearer {token}"}
        ).status_code

    # Execute: the user; a user of another organization; a subject that is no user.
    statuses = [chat(str(user)), chat(str(stranger)), chat("service-account")]

    # Assert
    assert statuses == [200, 200, 200]
    with transaction(service.engine) as session:
        ids = session.scalars(
            sa.select(LlmUsageLog.user_id)
            .where(LlmUsageLog.organization_id == org)
            .order_by(LlmUsageLog.created_at)
        ).all()
    assert sorted(ids, key=str) == sorted([user, None, None], key=str)
