"""The relay's numbers for the operator: what ``accute-fl hub status`` prints, and what the admin
console's ``/metrics`` exports as Prometheus gauges (``hub_metrics``).

Two sources: the outbox itself (pending, oldest age, rate, failures, dead letters and commit→ack
latency from ``published_at - occurred_at``; true across processes and restarts) and this
process's relays (``LOCAL``: counters and a window of ack latencies measured in memory).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.hub import store


class RelayStats:
    """Counters and recent latencies of the relays running in this process (thread-safe)."""

    def __init__(self, window_s: float = 600.0, max_samples: int = 100_000) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.published = 0
        self.failed = 0
        self.dead = 0
        self.batches = 0
        self.unavailable = 0

    def record(self, *, latencies_ms: list[float], failed: int, dead: int, unavailable: bool) -> None:
        now = time.monotonic()
        with self._lock:
            self.batches += 1
            self.published += len(latencies_ms)
            self.failed += failed
            self.dead += dead
            self.unavailable += unavailable
            self._samples.extend((now, ms) for ms in latencies_ms)

    def latency(self) -> dict[str, float | None]:
        cutoff = time.monotonic() - self.window_s
        with self._lock:
            values = sorted(ms for at, ms in self._samples if at >= cutoff)
        return {
            "p50": store.percentile(values, 0.5),
            "p99": store.percentile(values, 0.99),
            "n": float(len(values)),
        }

    def snapshot(self) -> dict[str, Any]:
        latency = self.latency()
        with self._lock:
            return {
                "published": self.published,
                "failed": self.failed,
                "dead": self.dead,
                "batches": self.batches,
                "unavailable": self.unavailable,
                "latency_ms_p50": latency["p50"],
                "latency_ms_p99": latency["p99"],
                "latency_samples": int(latency["n"] or 0),
            }


#: The relays of this process (``serve`` or ``hub relay``) report here.
LOCAL = RelayStats()


def hub_metrics(session: Session) -> dict[str, float]:
    """Gauge name → value, for Prometheus (``accute_hub_*``); None values are left out.

    The outbox numbers are the platform's (every relay's); ``accute_hub_relay_*`` are this
    process's relays since start.
    """
    outbox = store.status(session)
    local = LOCAL.snapshot()
    values: dict[str, Any] = {
        "accute_hub_outbox_pending": outbox["pending"],
        "accute_hub_outbox_oldest_pending_age_seconds": outbox["oldest_pending_age_s"],
        "accute_hub_outbox_published_per_minute": outbox["published_per_minute"],
        "accute_hub_outbox_failing": outbox["failing"],
        "accute_hub_outbox_dead": outbox["dead"],
        "accute_hub_publish_latency_p50_seconds": _seconds(outbox["latency_ms_p50"]),
        "accute_hub_publish_latency_p99_seconds": _seconds(outbox["latency_ms_p99"]),
        "accute_hub_relay_published_total": local["published"],
        "accute_hub_relay_failed_total": local["failed"],
        "accute_hub_relay_dead_total": local["dead"],
        "accute_hub_relay_unavailable_total": local["unavailable"],
    }
    return {k: float(v) for k, v in values.items() if v is not None}


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0
