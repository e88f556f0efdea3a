"""Per-config rate limits (rpm/tpm over a sliding minute) and circuit breakers, in process memory.

Rate limits: a config is skipped when one more request would exceed ``rate_limit_rpm`` in the
last 60 s, or when the tokens it used in the last 60 s plus this request's estimate (words of the
message + ``max_tokens``) would exceed ``rate_limit_tpm``. The estimate is reserved when the
request is let through (so concurrent requests see each other's share at once and cannot together
exceed the limit), then corrected to the tokens actually used after the reply (``settle``), or
given back when the provider answered nothing.

Circuit breaker: ``circuit_failure_threshold`` consecutive failed requests open the circuit (the
config's ``health_status`` becomes ``unhealthy``); after ``circuit_cooldown_s`` one trial request
is let through (half-open); its success closes the circuit (``healthy``), its failure re-opens it.
A config marked unhealthy by another process is given a trial once its ``last_health_check`` is
older than the cooldown.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0


class RateLimiter:
    def __init__(self) -> None:
        self._windows: dict[Hashable, _Window] = {}
        self._lock = threading.Lock()

    def _trim(self, window: _Window, now: float) -> None:
        while window.requests and now - window.requests[0] >= WINDOW_S:
            window.requests.popleft()
        while window.tokens and now - window.tokens[0][0] >= WINDOW_S:
            window.token_sum -= window.tokens.popleft()[1]

    def try_acquire(self, config_id: Hashable, rpm: int | None, tpm: int | None, estimate: int) -> bool:
        """Count one request if it fits both limits; False (nothing counted) otherwise."""
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(config_id, _Window())
            self._trim(window, now)
            if rpm is not None and len(window.requests) + 1 > rpm:
                return False
            if tpm is not None and window.token_sum + estimate > tpm:
                return False
            window.requests.append(now)
            window.tokens.append((now, estimate))
            window.token_sum += estimate
            return True

    def forget_idle(self) -> int:
        """Drop the windows of keys with no request in the last minute (keys such as client
        addresses come and go); how many were dropped."""
        now = time.monotonic()
        with self._lock:
            idle = [k for k, w in self._windows.items() if not w.requests or now - w.requests[-1] >= WINDOW_S]
            for key in idle:
                del self._windows[key]
        return len(idle)

    def retry_after(self, key: Hashable) -> float:
        """Seconds until the oldest request counted for ``key`` leaves the window (0 if none)."""
        with self._lock:
            window = self._windows.get(key)
            if window is None or not window.requests:
                return 0.0
            return max(WINDOW_S - (time.monotonic() - window.requests[0]), 0.0)

    def settle(self, config_id: Hashable, reserved: int, used: int) -> None:
        """Replace a request's reserved estimate by the tokens it used (0 when it failed)."""
        delta = used - reserved
        if delta == 0:
            return
        with self._lock:
            window = self._windows.setdefault(config_id, _Window())
            window.tokens.append((time.monotonic(), delta))
            window.token_sum += delta


CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class _Breaker:
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False


class CircuitBreakers:
    def __init__(self, failure_threshold: int, cooldown_s: float) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._breakers: dict[uuid.UUID, _Breaker] = {}
        self._lock = threading.Lock()

    def state(self, config_id: uuid.UUID) -> str:
        breaker = self._breakers.get(config_id)
        return CLOSED if breaker is None else breaker.state

    def allow(self, config_id: uuid.UUID, unhealthy_for_s: float | None) -> bool:
        """Whether a request may go to the config now (taking the half-open trial if due).

        ``unhealthy_for_s``: seconds since the database marked the config unhealthy (None if it is not).
        """
        now = time.monotonic()
        with self._lock:
            breaker = self._breakers.get(config_id)
            if breaker is None:
                if unhealthy_for_s is None:
                    return True
                # Unhealthy per another process: open here too, as of when it was marked.
                breaker = _Breaker(OPEN, self.failure_threshold, now - unhealthy_for_s)
                self._breakers[config_id] = breaker
            if breaker.state == CLOSED:
                return True
            if breaker.state == OPEN and now - breaker.opened_at >= self.cooldown_s:
                breaker.state = HALF_OPEN
                breaker.trial_in_flight = False
            if breaker.state == HALF_OPEN and not breaker.trial_in_flight:
                breaker.trial_in_flight = True
                return True
            return False

    def release(self, config_id: uuid.UUID) -> None:
        """A request that was allowed did not reach the provider (e.g. deadline); free the trial."""
        with self._lock:
            breaker = self._breakers.get(config_id)
            if breaker is not None and breaker.state == HALF_OPEN:
                breaker.trial_in_flight = False

    def success(self, config_id: uuid.UUID) -> bool:
        """Record a success; True when this closed an open or half-open circuit."""
        with self._lock:
            breaker = self._breakers.get(config_id)
            if breaker is None:
                return False
            recovered = breaker.state != CLOSED
            self._breakers[config_id] = _Breaker()
            return recovered

    def reset(self, config_id: uuid.UUID) -> None:
        """Forget the config's circuit (its admin changed it: the old verdict no longer applies)."""
        with self._lock:
            self._breakers.pop(config_id, None)

    def failure(self, config_id: uuid.UUID) -> bool:
        """Record a failed request; True when this opened the circuit."""
        with self._lock:
            breaker = self._breakers.setdefault(config_id, _Breaker())
            breaker.failures += 1
            if breaker.state == HALF_OPEN or breaker.failures >= self.failure_threshold:
                was_open = breaker.state == OPEN
                breaker.state, breaker.opened_at, breaker.trial_in_flight = OPEN, time.monotonic(), False
                return not was_open
            return False
