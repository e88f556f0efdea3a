"""Request rate limits per organization and per client address (spec layer 3, "Redis-based").

A sliding minute: at most ``ACCUTE_RATE_LIMIT_ORG_PER_MINUTE`` authenticated requests per
organization and ``ACCUTE_RATE_LIMIT_ADDRESS_PER_MINUTE`` per client address (0 turns a limit
off). The address limit is checked before the token (a flood of bad tokens costs no signature
checks past it), the organization limit after. Over a limit: 429 ``rate_limited`` with
``Retry-After`` (whole seconds until the oldest counted request leaves the window).

Where the counts live:

- ``ACCUTE_REDIS_URL`` set: in Redis, through the ``limits`` library's sliding window counter
  (one atomic Lua call per limit, O(1) in Redis: the moving window's list is O(limit) per call),
  so every worker process and every host behind the same Redis shares one count; keys start with ``ACCUTE_RATE_LIMIT_KEY_PREFIX``. If Redis does not answer, the request
  is let through and a warning logged (at most once a minute): an outage of the limiter must not
  become an outage of the API;
- otherwise in process memory (``orchestrator.limits.RateLimiter``), per worker.

Leases (Redis). One Redis call per request cost more than the rest of the security gate together
(redis-py's asyncio client spends 0.2-0.45 ms of CPU per call on a loaded machine). A worker
therefore takes a *lease* of several requests at once (one hit of cost n, counted in Redis up
front) and spends it locally: n is the number of requests the key saw in this worker in the last
100 ms, at least 1 and at most 1% of the limit. A quiet key (or a small limit: under 200 a
minute) asks Redis for every request, exactly; a busy one asks about once per 100 ms. The count in
Redis is never below the requests admitted (leases are counted when taken), so the limit is never
exceeded across workers; unused lease (discarded after ``LEASE_TTL_S``) can only refuse a few
requests early, at most 1% of the limit per worker.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from orchestrator.limits import RateLimiter
from schema.config import Settings

log = logging.getLogger("accute.security")
#: The window over which a key's local request rate is counted to size its next lease.
LEASE_BUCKET_S = 0.1
#: An unused lease is dropped after this long (its count stays in Redis: conservative).
LEASE_TTL_S = 1.0
#: Keys remembered for leases before idle ones are forgotten.
MAX_LEASES = 10_000


@dataclass
class _Lease:
    left: int = 0
    expires: float = 0.0
    bucket: float = 0.0
    seen: int = 0
    previous: int = 0


class Limits(Protocol):
    async def hit(self, kind: str, key: str, per_minute: int) -> float | None:
        """Count one request; None if within the limit, else seconds to wait (nothing counted)."""
        ...

    async def close(self) -> None: ...


class MemoryLimits:
    #: Idle keys are forgotten every this many hits (memory stays bounded by active keys).
    PRUNE_EVERY = 10_000

    def __init__(self) -> None:
        self.limiter = RateLimiter()
        self._hits = 0

    async def hit(self, kind: str, key: str, per_minute: int) -> float | None:
        self._hits += 1
        if self._hits % self.PRUNE_EVERY == 0:
            self.limiter.forget_idle()
        slot = (kind, key)
        if self.limiter.try_acquire(slot, per_minute, None, 0):
            return None
        return self.limiter.retry_after(slot)

    async def close(self) -> None:
        return None


class RedisLimits:
    def __init__(self, url: str, prefix: str) -> None:
        from limits import RateLimitItemPerMinute
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import SlidingWindowCounterRateLimiter

        scheme, _, rest = url.partition("://")
        async_url = url if scheme.startswith("async+") else f"async+{scheme}://{rest}"
        self.storage = RedisStorage(async_url, implementation="redispy", key_prefix=prefix)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._item = RateLimitItemPerMinute
        self._items: dict[int, object] = {}
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._warned = 0.0

    def _lease(self, slot: tuple[str, str], now: float) -> _Lease:
        lease = self._leases.get(slot)
        if lease is None:
            if len(self._leases) >= MAX_LEASES:
                self._leases = {k: v for k, v in self._leases.items() if now - v.bucket < LEASE_TTL_S}
            lease = self._leases[slot] = _Lease(bucket=now)
        if now - lease.bucket >= LEASE_BUCKET_S:
            lease.previous = lease.seen if now - lease.bucket < 2 * LEASE_BUCKET_S else 0
            lease.bucket, lease.seen = now, 0
        lease.seen += 1
        return lease

    async def hit(self, kind: str, key: str, per_minute: int) -> float | None:
        now = time.monotonic()
        lease = self._lease((kind, key), now)
        if lease.left > 0 and now < lease.expires:
            lease.left -= 1
            return None
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = self._item(per_minute)
        size = max(1, min(lease.previous, per_minute // 100))
        try:
            if size > 1 and await self.limiter.hit(item, kind, key, cost=size):  # type: ignore[arg-type]
                lease.left, lease.expires = size - 1, now + LEASE_TTL_S
                return None
            if await self.limiter.hit(item, kind, key):  # type: ignore[arg-type]
                lease.left = 0
                return None
            stats = await self.limiter.get_window_stats(item, kind, key)  # type: ignore[arg-type]
        except Exception as exc:
            now = time.monotonic()
            if now - self._warned > 60:
                self._warned = now
                log.warning(
                    "rate limits: Redis did not answer (%s); requests are let through", type(exc).__name__
                )
            return None
        return max(stats.reset_time - time.time(), 0.0)

    async def close(self) -> None:
        return None


def make_limits(settings: Settings) -> Limits:
    if settings.redis_url:
        return RedisLimits(settings.redis_url, settings.rate_limit_key_prefix)
    return MemoryLimits()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
