"""Request rate limits per organization and per client address (spec layer 3, "Redis-based").

A sliding minute: at most ``ACCUTE_RATE_LIMIT_ORG_PER_MINUTE`` authenticated requests per
organization and ``ACCUTE_RATE_LIMIT_ADDRESS_PER_MINUTE`` per client address (0 turns a limit
off). The address limit is checked before the token (a flood of bad tokens costs no signature
checks past it), the organization limit after. Over a limit: 429 ``rate_limited`` with
``Retry-After`` (whole seconds until the oldest counted request leaves the window).

Where the counts live:

- ``ACCUTE_REDIS_URL`` set: in Redis, through the ``limits`` library's moving window (one Lua call
  per limit, atomic), so every worker process and every host behind the same Redis shares one
  count; keys start with ``ACCUTE_RATE_LIMIT_KEY_PREFIX``. If Redis does not answer, the request
  is let through and a warning logged (at most once a minute): an outage of the limiter must not
  become an outage of the API;
- otherwise in process memory (``orchestrator.limits.RateLimiter``), per worker.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol

from orchestrator.limits import RateLimiter
from schema.config import Settings

log = logging.getLogger("accute.security")


class Limits(Protocol):
    async def hit(self, kind: str, key: str, per_minute: int) -> float | None:
        """Count one request; None if within the limit, else seconds to wait (nothing counted)."""
        ...

    async def close(self) -> None: ...


class MemoryLimits:
    def __init__(self) -> None:
        self.limiter = RateLimiter()

    async def hit(self, kind: str, key: str, per_minute: int) -> float | None:
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
        from limits.aio.strategies import MovingWindowRateLimiter

        scheme, _, rest = url.partition("://")
        async_url = url if scheme.startswith("async+") else f"async+{scheme}://{rest}"
        self.storage = RedisStorage(async_url, implementation="redispy", key_prefix=prefix)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self._item = RateLimitItemPerMinute
        self._items: dict[int, object] = {}
        self._warned = 0.0

    async def hit(self, kind: str, key: str, per_minute: int) -> float | None:
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = self._item(per_minute)
        try:
            if await self.limiter.hit(item, kind, key):  # type: ignore[arg-type]
                return None
            stats = await self.limiter.get_window_stats(item, kind, key)  # type: ignore[arg-type]
        except Exception as exc:
            now = time.monotonic()
            if now - self._warned > 60:
                self._warned = now
                log.warning("rate limits: Redis did not answer (%s); requests are let through", type(exc).__name__)
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
