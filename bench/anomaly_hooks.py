"""Benchmark: what the anomaly detectors add to ``Guard.authenticate`` + ``authorize`` per request.

In process, a cached token (the hot path), the monitor on and off, interleaved 9 x 20,000 calls:

    nice -n 10 .venv/bin/python bench/anomaly_hooks.py
"""

import asyncio, statistics, tempfile, time, uuid
from orchestrator.api.deps import Guard
from orchestrator.service import build_services
from schema import directory, migrate
from schema.config import Settings
from schema.db import make_engine, transaction

d = tempfile.mkdtemp()
url = f"sqlite:///{d}/a.db"
engine = make_engine(url)
migrate.upgrade(engine)
on = build_services(Settings(database_url=url, kek_file=f"{d}/kek.json"), engine)
off = build_services(Settings(database_url=url, kek_file=f"{d}/kek.json", anomaly_detection=False), engine)
with transaction(engine) as s:
    org = directory.create_organization(s, "b").id
token = on.tokens.issue(role="org_user", organization_id=org)
off.tokens = on.tokens
g_on, g_off = Guard(on), Guard(off)


async def run(g, n):
    t = time.perf_counter()
    for _ in range(n):
        who = await g.authenticate(token, "127.0.0.1")
        g.authorize(who, org, ("org_user",), "127.0.0.1", "/x")
    return (time.perf_counter() - t) / n * 1e6


async def main():
    await run(g_on, 1000)
    await run(g_off, 1000)
    res = []
    for _ in range(9):
        a = await run(g_off, 20000)
        b = await run(g_on, 20000)
        res.append((a, b))
    print("authenticate+authorize per request, us (off, on):", [(round(a, 2), round(b, 2)) for a, b in res])
    print(
        "median off %.2f on %.2f added %.2f us"
        % (
            statistics.median(a for a, _ in res),
            statistics.median(b for _, b in res),
            statistics.median(b - a for a, b in res),
        )
    )


asyncio.run(main())
