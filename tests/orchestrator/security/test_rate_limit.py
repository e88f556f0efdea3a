"""Rate limits shared through Redis by leases: never over the limit, at most a lease early."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis

from orchestrator.security.rate_limit import MemoryLimits, RedisLimits

REDIS_URL = os.environ.get("ACCUTE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def test_two_limiters_on_one_redis_admit_the_limit_and_no_more() -> None:
    # Prepare: two "workers" (two limiter objects, two connection pools) on one key, 1000 a minute.
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    prefix = f"accute-test-{uuid.uuid4().hex[:8]}"
    workers = [RedisLimits(REDIS_URL, prefix), RedisLimits(REDIS_URL, prefix)]

    async def burst() -> list[float | None]:
        results: list[float | None] = []
        for i in range(1500):  # alternating, as a load balancer would
            results.append(await workers[i % 2].hit("org", "acme", 1000))
        return results

    # Execute
    try:
        results = asyncio.run(burst())
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)

    # Assert: never more than the limit; leases left unused (at most 10 per worker) may refuse early.
    admitted = sum(r is None for r in results)
    assert 1000 - 2 * 10 <= admitted <= 1000
    assert all(0 < r <= 60 for r in results if r is not None)


def test_memory_limits_refuse_with_retry_after() -> None:
    limits = MemoryLimits()

    async def run() -> list[float | None]:
        return [await limits.hit("address", "127.0.0.9", 3) for _ in range(5)]

    results = asyncio.run(run())
    assert results[:3] == [None, None, None]
    assert all(r is not None and 59 <= r <= 60 for r in results[3:])
