"""Latency of ledger charges, kept in the process as a fixed-bucket histogram.

The ledger observes every charge here (two clock reads and a bisect: nothing on the hot path
imports the Prometheus client); ``/metrics`` exports the buckets as a histogram. Per process: a
server with several workers reports one histogram per worker, as Prometheus expects.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the buckets; +Inf is implicit.
CHARGE_BUCKETS_S: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class LatencyHistogram:
    """Counts per bucket (not cumulative), the sum and the count of observed seconds."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total_s: float = 0.0
    count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, seconds: float) -> None:
        index = bisect_left(self.buckets, seconds)
        with self._lock:
            self.counts[index] += 1
            self.total_s += seconds
            self.count += 1

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (upper bound, count) pairs ending with +Inf, and the sum, as Prometheus wants."""
        with self._lock:
            counts, total = list(self.counts), self.total_s
        cumulative, running = [], 0
        for bound, count in zip([*map(repr, self.buckets), "+Inf"], counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative, total


#: Every ``privacy.ledger.charge`` of this process, committed or refused.
CHARGES = LatencyHistogram(CHARGE_BUCKETS_S)
