"""Benchmark: latency the inference cascade adds over calling the same provider directly.

Three processes on loopback: a minimal OpenAI-compatible provider (uvicorn, raw ASGI), the
cascade service (uvicorn, usage logging on PostgreSQL) and this client. The client sends the
same chat request N times at C concurrent requests, first directly to the provider, then through
``POST /v1/orgs/{org}/agents/{agent}/chat`` (a tenant config pointing at the provider). It prints
p50/p99 of both, the added latency, and the cascade's throughput; nothing is cached.

    .venv/bin/python bench/cascade_overhead.py [--requests 3000] [--concurrency 50]

PostgreSQL: ACCUTE_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test);
the run uses its own schema and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import sqlalchemy as sa

POSTGRES_URL = os.environ.get("ACCUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
).encode()


async def provider_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": REPLY})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_provider(port: int) -> None:
    import uvicorn

    uvicorn.run(provider_app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def _run_service(port: int, env: dict[str, str]) -> None:
    os.environ.update(env)
    import uvicorn

    uvicorn.run(
        "orchestrator.service:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
    )


def _wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def _load(
    url: str, body: dict[str, Any], headers: dict[str, str], total: int, concurrency: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                response = await client.post(url, json=body, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{url} answered {response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()

    from orchestrator import configs
    from orchestrator.service import build_services
    from schema import directory, migrate
    from schema.config import Settings
    from schema.db import make_engine, transaction

    schema_name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema_name}"')
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema_name}"})
    database_url = url.render_as_string(hide_password=False)
    state = Path(tempfile.mkdtemp(prefix="accute-bench-"))
    env = {
        "ACCUTE_DATABASE_URL": database_url,
        "ACCUTE_KEK_FILE": str(state / "kek.json"),
        "ACCUTE_WEIGHTS_DIR": str(state / "weights"),
        "ACCUTE_CACHE_ENABLED": "false",
        "ACCUTE_CONFIG_CACHE_TTL_S": "5",
    }
    provider_port, service_port = _free_port(), _free_port()
    processes = [
        multiprocessing.Process(target=_run_provider, args=(provider_port,), daemon=True),
        multiprocessing.Process(target=_run_service, args=(service_port, env), daemon=True),
    ]
    try:
        engine = make_engine(database_url)
        migrate.upgrade(engine)
        settings = Settings(database_url=database_url, kek_file=state / "kek.json")
        services = build_services(settings, engine)
        with transaction(engine) as session:
            org = directory.create_organization(session, "bench firm").id
            body = configs.ConfigCreate(
                provider="openai",
                display_name="bench",
                model_id="bench-model",
                api_endpoint=f"http://127.0.0.1:{provider_port}/v1",
                api_key="sk-bench",  # type: ignore[arg-type]
                rate_limit_rpm=1_000_000,
                rate_limit_tpm=1_000_000_000,
            )
            configs.create(session, services.keyring, org, body)
        token = services.tokens.issue(role="org_user", organization_id=org, ttl_s=3600)
        for process in processes:
            process.start()
        _wait(f"http://127.0.0.1:{provider_port}/")
        _wait(f"http://127.0.0.1:{service_port}/healthz")

        direct_url = f"http://127.0.0.1:{provider_port}/v1/chat/completions"
        direct_body = {
            "model": "bench-model",
            "messages": [{"role": "user", "content": "What is the VAT rate?"}],
        }
        cascade_url = f"http://127.0.0.1:{service_port}/v1/orgs/{org}/agents/luca/chat"
        cascade_body = {"message": "What is the VAT rate?"}
        auth = {"Authorization": f"Bearer {token}"}

        asyncio.run(
            _load(
                direct_url, direct_body, {"authorization": "Bearer sk-bench"}, args.warmup, args.concurrency
            )
        )
        asyncio.run(_load(cascade_url, cascade_body, auth, args.warmup, args.concurrency))
        direct, direct_s = asyncio.run(
            _load(
                direct_url, direct_body, {"authorization": "Bearer sk-bench"}, args.requests, args.concurrency
            )
        )
        cascade, cascade_s = asyncio.run(
            _load(cascade_url, cascade_body, auth, args.requests, args.concurrency)
        )
        with engine.connect() as connection:
            logged = connection.execute(sa.text("SELECT count(*) FROM llm_usage_log")).scalar_one()
        result = {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "direct_p50_ms": round(_pct(direct, 50), 2),
            "direct_p99_ms": round(_pct(direct, 99), 2),
            "direct_rps": round(args.requests / direct_s, 1),
            "cascade_p50_ms": round(_pct(cascade, 50), 2),
            "cascade_p99_ms": round(_pct(cascade, 99), 2),
            "cascade_rps": round(args.requests / cascade_s, 1),
            "added_p50_ms": round(_pct(cascade, 50) - _pct(direct, 50), 2),
            "added_p99_ms": round(_pct(cascade, 99) - _pct(direct, 99), 2),
            "usage_rows_logged": logged,
        }
        print(json.dumps(result, indent=2))
        engine.dispose()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema_name}" CASCADE')
        admin.dispose()


if __name__ == "__main__":
    main()
