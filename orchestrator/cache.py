"""Response cache, keyed per organization (never shared across tenants).

The key is the SHA-256 of the organization id, the agent, the organization's provider chain
(provider/model of its active configs by priority, then VAMN's active model and the fallback's),
the whitespace-normalized message and the parameters (max_tokens, temperature); Redis keys are
also prefixed with the organization id. A change of configs makes old entries unreachable.
In-memory LRU by default, Redis when ``ACCUTE_REDIS_URL`` is set. A hit is logged with
``cache_hit`` and zero tokens, and is not billed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Protocol

from schema.config import Settings


def cache_key(
    organization_id: uuid.UUID,
    agent_slug: str,
    chain: list[str],
    message: str,
    max_tokens: int,
    temperature: float,
) -> str:
    normalized = " ".join(message.split())
    material = json.dumps(
        [str(organization_id), agent_slug, chain, normalized, max_tokens, round(temperature, 4)],
        separators=(",", ":"),
    )
    return f"accute:cache:{organization_id}:{hashlib.sha256(material.encode()).hexdigest()}"


class ResponseCache(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, value: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class LruCache:
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self.ttl_s:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return dict(entry[1])

    async def set(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), dict(value))
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    async def close(self) -> None:
        return None


class RedisCache:
    def __init__(self, url: str, ttl_s: int) -> None:
        import redis.asyncio as redis_asyncio

        self.ttl_s = ttl_s
        self._client: Any = redis_asyncio.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self._client.get(key)
        except Exception:  # a cache outage must not fail a request
            return None
        return None if raw is None else dict(json.loads(raw))

    async def set(self, key: str, value: dict[str, Any]) -> None:
        try:
            await self._client.set(key, json.dumps(value), ex=self.ttl_s)
        except Exception:
            return

    async def close(self) -> None:
        await self._client.aclose()


def make_cache(settings: Settings) -> ResponseCache | None:
    if not settings.cache_enabled:
        return None
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.cache_ttl_s)
    return LruCache(settings.cache_max_entries, settings.cache_ttl_s)
