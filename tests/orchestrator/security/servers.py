"""Running `accute-fl serve` processes on one database for the security tests that need a real
server (and sometimes two): environment, start, stop, clients bound to a chosen loopback source."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from orchestrator.service import build_services
from schema import directory
from schema.db import make_engine, transaction
from schema.migrate import upgrade
from tests.conftest import _postgres_schema_url
from tests.orchestrator.conftest import make_settings
from tests.orchestrator.fakes import wait_ready
from tests.orchestrator.security.test_gate_service import SCRIPT, _free_port, _start, _stop


@contextmanager
def database(backend: str, tmp: Path) -> Iterator[str]:
    """A migrated, empty database URL of ``backend`` (``sqlite`` or ``postgresql``)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'accute.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    for url in _postgres_schema_url():
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


@dataclass
class Cluster:
    """Servers sharing one database (and Redis when the environment names one)."""

    url: str
    engine: Engine
    env: dict[str, str]
    services: Any
    org: uuid.UUID
    bases: list[str] = field(default_factory=list)

    def client(self, source: str, server: int = 0) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=self.bases[server], transport=transport, timeout=30, trust_env=False)

    def token(self, role: str = "org_admin", subject: str | None = None, ttl_s: int | None = None) -> str:
        return str(
            self.services.tokens.issue(role=role, organization_id=self.org, subject=subject, ttl_s=ttl_s)
        )

    def cli(self, *args: str) -> Any:
        import subprocess

        return subprocess.run([SCRIPT, *args], env=self.env, capture_output=True, text=True, timeout=120)


@contextmanager
def cluster(url: str, tmp: Path, servers: int = 1, **extra: str) -> Iterator[Cluster]:
    """``servers`` `accute-fl serve` processes on ``url`` with ``ACCUTE_*`` settings ``extra``."""
    settings = make_settings(tmp, None)
    engine = make_engine(url)
    services = build_services(settings, engine)
    with transaction(engine) as session:
        org = directory.create_organization(session, f"sec {uuid.uuid4().hex[:6]}").id
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")} | {
        "ACCUTE_DATABASE_URL": url,
        "ACCUTE_KEK_FILE": str(settings.kek_file),
        "ACCUTE_WEIGHTS_DIR": str(settings.weights_dir),
        "ACCUTE_ZERO_TRUST_LOG_FLUSH_MS": "50",
        **{f"ACCUTE_{k.upper()}": v for k, v in extra.items()},
    }
    ports = [_free_port() for _ in range(servers)]
    procs = [_start(env, port) for port in ports]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    output = ""
    try:
        for base in bases:
            wait_ready(base, procs)
        yield Cluster(url, engine, env, services, org, bases)
    finally:
        output = _stop(procs)
        engine.dispose()
    assert "Traceback" not in output, output
