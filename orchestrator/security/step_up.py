"""Step-up: a token that passed the ``mfa`` challenge is not challenged again for a while.

Without it a challenged user could make one request per TOTP time step (30 s), since each code
passes once. After a passed challenge the gate remembers the token (its SHA-256, never the token)
for ``ACCUTE_MFA_STEP_UP_S`` seconds: in this worker's memory (bounded), and with
``ACCUTE_REDIS_URL`` in Redis too (``SET ... EX``), so the other workers honour it. It is bound to
that token: another token of the same user is challenged again. Only challenged requests look it
up, so it costs the other requests nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from orchestrator.security.stats import BoundedLru
from schema.config import Settings

log = logging.getLogger("accute.security")


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StepUps:
    def __init__(self, settings: Settings, capacity: int = 65_536) -> None:
        self.seconds = settings.mfa_step_up_s
        self.redis_url = settings.redis_url
        self.prefix = f"{settings.rate_limit_key_prefix}:step-up:"
        self._until: BoundedLru[str, list[float]] = BoundedLru(capacity)
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self.redis_url or "", socket_connect_timeout=1, socket_timeout=1
            )
        return self._client

    def remember(self, key: str) -> None:
        """``key``'s token passed a challenge now (blocking: call off the event loop with Redis)."""
        if self.seconds <= 0:
            return
        self._until.setdefault(key, lambda: [0.0])[0] = time.time() + self.seconds
        if self.redis_url:
            try:
                self._redis().set(self.prefix + key, "1", ex=self.seconds)
            except Exception as exc:  # this worker still remembers it
                log.warning("storing a step-up in Redis failed (%s)", type(exc).__name__)

    def active(self, key: str) -> bool:
        """Whether ``key``'s token passed a challenge within the step-up time (here or, with
        Redis, on another worker)."""
        if self.seconds <= 0:
            return False
        until = self._until.get(key)
        if until is not None and until[0] > time.time():
            return True
        if not self.redis_url:
            return False
        try:
            return bool(self._redis().exists(self.prefix + key))
        except Exception as exc:
            log.warning("reading a step-up from Redis failed (%s)", type(exc).__name__)
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
