"""`accute-fl serve --workers 2` as a user runs it: real processes, every request accounted for."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from orchestrator.service import build_services
from schema import directory
from schema.db import transaction
from schema.models import LlmRequest, LlmUsageLog
from tests.orchestrator.conftest import FALLBACK_KEY, make_settings
from tests.orchestrator.fakes import FakeProvider, wait_ready

SCRIPT = shutil.which("accute-fl") or str(Path(sys.executable).with_name("accute-fl"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _chat_many(base: str, path: str, token: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60, trust_env=False) as client:
        return await asyncio.gather(
            *(
                client.post(
                    path, json={"message": f"question {i}"}, headers={"Authorization": f"Bearer {token}"}
                )
                for i in range(count)
            )
        )


@pytest.mark.slow
def test_serve_with_two_workers_answers_and_accounts_every_request(
    engine: Engine, tmp_path: Path, fallback: FakeProvider
) -> None:
    # Prepare: a migrated database, an organization and a token signed with the server's keys.
    settings = make_settings(tmp_path, fallback.url)
    services = build_services(settings, engine)
    with transaction(engine) as session:
        org = directory.create_organization(session, "served firm").id
    token = services.tokens.issue(role="org_user", organization_id=org)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")} | {
        "ACCUTE_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "ACCUTE_KEK_FILE": str(settings.kek_file),
        "ACCUTE_WEIGHTS_DIR": str(settings.weights_dir),
        "ACCUTE_FALLBACK_PROVIDER": "openai",
        "ACCUTE_FALLBACK_API_ENDPOINT": str(fallback.url),
        "ACCUTE_FALLBACK_API_KEY": FALLBACK_KEY,
        "ACCUTE_FALLBACK_MODEL": "fallback-model",
    }
    server = subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, [server], seconds=60)

        # Execute
        responses = asyncio.run(_chat_many(base, f"/v1/orgs/{org}/agents/luca/chat", token, 40))
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)

    # Assert: every request answered by the fallback with its overhead; every one accounted once.
    assert [r.status_code for r in responses] == [200] * 40, output
    assert all(float(r.headers["x-accute-overhead-ms"]) >= 0 for r in responses)
    assert server.returncode == 0, output
    assert "Traceback" not in output
    with transaction(engine) as session:
        requests = session.scalar(select(func.count()).select_from(LlmRequest))
        usage = session.scalar(select(func.count()).select_from(LlmUsageLog))
    assert (requests, usage, len(fallback.received)) == (40, 40, 40)


def test_the_module_workers_reimport_is_lean() -> None:
    # Prepare: what a spawned worker imports again (the parent's main module, as __mp_main__).
    code = (
        "import sys, runpy; runpy.run_module('orchestrator.served', run_name='__mp_main__'); "
        "print(sorted(m for m in sys.modules if m.startswith(('orchestrator', 'typer', 'fastapi', 'torch'))))"
    )

    # Execute
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    # Assert: nothing of the CLI, the service or any heavy library; only the module itself.
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['orchestrator']"
