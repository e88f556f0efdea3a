"""Single flight across processes: copies of one request id in two servers call a provider once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from orchestrator import accounting
from orchestrator.service import build_services
from schema import directory
from schema.db import transaction
from schema.models import LlmInflight, LlmRequest, LlmUsageLog
from schema.timeutil import utcnow
from tests.orchestrator.conftest import FALLBACK_KEY, make_settings
from tests.orchestrator.fakes import FakeProvider, running, wait_ready
from tests.orchestrator.test_serve import SCRIPT, _free_port


def test_one_claim_wins_and_a_stale_claim_is_taken_over(engine: Engine) -> None:
    # Prepare: an organization.
    with transaction(engine) as session:
        org = directory.create_organization(session, "claims").id
    long_ago = utcnow() - timedelta(hours=1)

    # Execute: two claims on one id, then the first goes stale and a third claims it.
    with transaction(engine) as session:
        first = accounting.claim(session, org, "caller", "r-1", long_ago)
    with transaction(engine) as session:
        second = accounting.claim(session, org, "caller", "r-1", long_ago)
    with transaction(engine) as session:
        taken_over = accounting.claim(session, org, "caller", "r-1", utcnow() + timedelta(seconds=1))
    with transaction(engine) as session:
        accounting.release(session, org, "caller", "r-1", first)  # type: ignore[arg-type]
        still = session.scalar(select(LlmInflight.claim_id))

    # Assert: one winner; the stale one is replaced; the old owner cannot release the new claim.
    assert first is not None and second is None
    assert taken_over is not None and taken_over != first
    assert still == taken_over


def _start(port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def _copies(bases: list[str], path: str, token: str, per_server: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {token}", "X-Request-Id": "same-request"}
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        return await asyncio.gather(
            *(
                client.post(f"{base}{path}", json={"message": "one question"}, headers=headers)
                for _ in range(per_server)
                for base in bases
            )
        )


@pytest.mark.slow
def test_copies_of_a_request_id_in_two_server_processes_call_the_provider_once(
    engine: Engine, tmp_path: Path
) -> None:
    # Prepare: a slow counting provider (the platform fallback), two servers on one database.
    with running(FakeProvider(api_key=FALLBACK_KEY, reply="only once", delay_s=1.0)) as provider:
        settings = make_settings(tmp_path, provider.url)
        services = build_services(settings, engine)
        with transaction(engine) as session:
            org = directory.create_organization(session, "two servers").id
        token = services.tokens.issue(role="org_user", organization_id=org)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")} | {
            "ACCUTE_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "ACCUTE_KEK_FILE": str(settings.kek_file),
            "ACCUTE_WEIGHTS_DIR": str(settings.weights_dir),
            "ACCUTE_FALLBACK_PROVIDER": "openai",
            "ACCUTE_FALLBACK_API_ENDPOINT": provider.url,
            "ACCUTE_FALLBACK_API_KEY": FALLBACK_KEY,
            "ACCUTE_FALLBACK_MODEL": "fallback-model",
        }
        ports = [_free_port(), _free_port()]
        servers = [_start(port, env) for port in ports]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        outputs: list[str] = []
        try:
            for base, server in zip(bases, servers, strict=True):
                wait_ready(base, [server])

            # Execute: 8 copies of one request id to each server at once.
            responses = asyncio.run(_copies(bases, f"/v1/orgs/{org}/agents/luca/chat", token, 8))
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
            outputs = [server.communicate(timeout=60)[0] for server in servers]

        # Assert: all 16 answered with the one answer; one provider call, one request, one usage row.
        assert [r.status_code for r in responses] == [200] * 16, outputs
        assert {r.json()["content"] for r in responses} == {"only once"}
        assert len(provider.received) == 1, outputs
    with transaction(engine) as session:
        requests = session.scalar(select(func.count()).select_from(LlmRequest))
        usage = session.scalar(select(func.count()).select_from(LlmUsageLog))
        claims = session.scalar(select(func.count()).select_from(LlmInflight))
    assert (requests, usage, claims) == (1, 1, 0)
