"""Benchmark: what the anomaly detectors add to ``Guard.authenticate`` + ``authorize`` per request.

In process, a cached token (the hot path), the monitor on and off, interleaved 9 x 20,000 calls:

    nice -n 10 .venv/bin/python bench/anomaly_hooks.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from orchestrator.api.deps import Guard
from orchestrator.service import build_services
from schema import directory, migrate
from schema.config import Settings
from schema.db import make_engine, transaction


async def _run(guard: Guard, token: str, org: object, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        who = await guard.authenticate(token, "127.0.0.1")
        guard.authorize(who, org, ("org_user",), "127.0.0.1", "/x")  # type: ignore[arg-type]
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    state = tempfile.mkdtemp()
    url = f"sqlite:///{state}/bench.db"
    engine = make_engine(url)
    migrate.upgrade(engine)
    on = build_services(Settings(database_url=url, kek_file=f"{state}/kek.json"), engine)
    off = build_services(
        Settings(database_url=url, kek_file=f"{state}/kek.json", anomaly_detection=False), engine
    )
    with transaction(engine) as session:
        org = directory.create_organization(session, "bench").id
    token = on.tokens.issue(role="org_user", organization_id=org)
    off.tokens = on.tokens
    guard_on, guard_off = Guard(on), Guard(off)
    await _run(guard_on, token, org, 1000)
    await _run(guard_off, token, org, 1000)
    pairs = []
    for _ in range(9):
        pairs.append((await _run(guard_off, token, org, 20_000), await _run(guard_on, token, org, 20_000)))
    print("per request, us (off, on):", [(round(a, 2), round(b, 2)) for a, b in pairs])
    off_us = statistics.median(a for a, _ in pairs)
    on_us = statistics.median(b for _, b in pairs)
    added = statistics.median(b - a for a, b in pairs)
    print(f"median off {off_us:.2f} on {on_us:.2f} added {added:.2f} us")


if __name__ == "__main__":
    asyncio.run(main())
