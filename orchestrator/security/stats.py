"""The detectors' arithmetic: pure functions and small bounded state, no I/O, no clock of their own.

Every structure here is bounded: keys live in an LRU of fixed size (a stranger sending from a
million addresses evicts the oldest, it cannot grow memory), and each key keeps a fixed number of
numbers. The caller passes the time (seconds), so tests replay days in milliseconds.

Rate baselines (``RateBaseline``): why median/MAD over per-minute buckets. An organization's
requests per minute follow its working day (quiet nights, a morning ramp, lunch dip) plus Poisson
noise. Its baseline is the **median of its last ``history`` completed minutes** and the spread is
``1.4826 x MAD`` (the median absolute deviation, scaled to a standard deviation for normal data):
both ignore the few earlier spikes that a mean and standard deviation would swallow (one
10x minute in an hour moves the mean by 15 % and the standard deviation by 3x, hiding the next
one; it moves the median and MAD by nothing). A minute is a spike when its count exceeds all of

- ``median + z x scale`` with ``scale = max(1.4826 x MAD, sqrt(median), 1)``: the Poisson floor
  ``sqrt(median)`` keeps a perfectly regular tenant (MAD = 0) from firing on +2 requests;
- ``ratio x median``: large tenants have a tiny relative noise, and the morning ramp moves the
  level faster than an hour's median follows; a spike must also be a multiple of the level;
- ``min_count``: a tenant that sends 3 requests a minute is not spiking at 12.

Daily seasonality: an hour's median lags the morning ramp (a firm goes from its night level to
its working level in two hours, 3x the last hour's median within twenty minutes), which made
most of the false alarms of a median-only rule (BENCHMARKS.md). So each key also keeps 24 numbers,
the level (mean per minute) of each hour of the day as a decaying maximum over the days before
(``SEASON_DECAY`` = 0.9 a day: a quiet weekend does not erase Monday's level), and the same for
each of the 168 hours of the week (so a Saturday is judged against Saturdays: with the
hour-of-day level alone, spikes on a quiet weekend were missed); a minute must also exceed
``max(ratio x level, level + z x sqrt(level))`` for its hour of the week (of the day during the
first week; on the first day only the recent baseline applies). 192 numbers a key.

The limit is computed once per minute (when the bucket rolls), so the per-request cost is an
increment and one comparison. Defaults: z = 6, ratio = 3, min_count = 30, history = 60 minutes,
judged after 30 minutes of history; the measured false-positive rate on a replay of 14 days of
seasonal traffic is in BENCHMARKS.md (``tests/orchestrator/test_security_anomalies.py``).

``Ewma`` is the alternative for a slowly drifting level (an exponentially weighted mean and
variance, z-scored before the update); the budget-burn rule uses a median ratio instead, and the
property tests check both.
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MAD_TO_SIGMA = 1.4826
#: Per day, how much of an hour-of-day's level is kept when the hour is quieter (about a week's memory).
SEASON_DECAY = 0.9
#: The Unix epoch was a Thursday: hour-of-week 0 is Monday 00:00 UTC.
HOUR_OF_WEEK_OFFSET = 3 * 24


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def mad(values: Sequence[float], center: float | None = None) -> float:
    """Median absolute deviation from ``center`` (the median by default)."""
    if not values:
        return 0.0
    mid = median(values) if center is None else center
    return median([abs(v - mid) for v in values])


def robust_scale(values: Sequence[float]) -> float:
    """``max(1.4826 x MAD, sqrt(median), 1)``: a spread that is never zero for count data."""
    mid = median(values)
    return max(MAD_TO_SIGMA * mad(values, mid), math.sqrt(max(mid, 0.0)), 1.0)


def robust_z(value: float, history: Sequence[float]) -> float:
    """How many robust spreads ``value`` lies above the median of ``history`` (0 without history)."""
    if not history:
        return 0.0
    return (value - median(history)) / robust_scale(history)


def spike_limit(history: Sequence[float], z: float, ratio: float, min_count: float) -> float:
    """The count above which a minute is a spike, given the completed minutes before it."""
    mid = median(history)
    return max(mid + z * robust_scale(history), ratio * mid, float(min_count))


class Ewma:
    """Exponentially weighted mean and variance; ``update`` returns the z-score of ``x`` before it counts."""

    def __init__(self, alpha: float = 0.05, floor: float = 1.0) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.floor = floor
        self.mean: float | None = None
        self.var = 0.0
        self.n = 0

    def z(self, x: float) -> float:
        if self.mean is None:
            return 0.0
        return (x - self.mean) / max(math.sqrt(self.var), self.floor)

    def update(self, x: float) -> float:
        score = self.z(x)
        self.n += 1
        if self.mean is None:
            self.mean = float(x)
            return score
        diff = x - self.mean
        incr = self.alpha * diff
        self.mean += incr
        self.var = (1 - self.alpha) * (self.var + diff * incr)
        return score


class BoundedLru(Generic[K, V]):
    """A dict of at most ``capacity`` keys; when full, the key inserted (or refreshed) longest ago goes.

    A hit does not reorder (``OrderedDict.move_to_end`` on every request cost more than the
    detector itself); a key is refreshed (moved to the young end) at most once per
    ``refresh_every`` hits, so a busy key is not the one evicted by a flood of new ones.
    """

    def __init__(self, capacity: int, refresh_every: int = 64) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.refresh_every = refresh_every
        self._items: OrderedDict[K, V] = OrderedDict()
        self._hits = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def _touch(self, key: K) -> None:
        self._hits += 1
        if self._hits >= self.refresh_every:
            self._hits = 0
            self._items.move_to_end(key)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._touch(key)
        return value

    def setdefault(self, key: K, factory: Callable[[], V]) -> V:
        value = self._items.get(key)
        if value is None:
            value = self._items[key] = factory()
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._touch(key)
        return value

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)


@dataclass(frozen=True)
class Spike:
    count: float
    median: float
    limit: float
    z: float


@dataclass
class _Minutes:
    minute: int
    count: float = 0.0
    history: deque[float] = field(default_factory=deque)
    limit: float | None = None
    fired: int = -1
    hour_total: float = 0.0
    seasonal: array[float] | None = None
    """24 hour-of-day levels, then 168 hour-of-week levels (mean requests a minute)."""


class RateBaseline(Generic[K]):
    """Per-key per-minute counts against the key's own rolling median/MAD (see the module docstring)."""

    def __init__(
        self,
        *,
        z: float = 6.0,
        ratio: float = 3.0,
        min_count: float = 30,
        history: int = 60,
        min_history: int = 30,
        capacity: int = 4096,
    ) -> None:
        self.z = z
        self.ratio = ratio
        self.min_count = min_count
        self.history = history
        self.min_history = min(min_history, history)
        self._keys: BoundedLru[K, _Minutes] = BoundedLru(capacity)

    def __len__(self) -> int:
        return len(self._keys)

    def _season(self, state: _Minutes, minute: int) -> None:
        """Close the hour(s) between ``state.minute`` and ``minute`` into the seasonal levels."""
        if minute // 60 == state.minute // 60:
            return
        if state.seasonal is None:
            state.seasonal = array("d", [math.nan] * (24 + 168))
        closed = state.minute // 60
        # The closed hour at its level; hours skipped entirely (no request at all) at zero.
        for hour_index in range(closed, min(minute // 60, closed + 169)):
            level = state.hour_total / 60.0 if hour_index == closed else 0.0
            for slot in (hour_index % 24, 24 + (hour_index + HOUR_OF_WEEK_OFFSET) % 168):
                previous = state.seasonal[slot]
                state.seasonal[slot] = level if math.isnan(previous) else max(level, SEASON_DECAY * previous)
        state.hour_total = 0.0

    def _seasonal_limit(self, state: _Minutes, minute: int) -> float:
        if state.seasonal is None:
            return 0.0
        hour_index = minute // 60
        level = state.seasonal[24 + (hour_index + HOUR_OF_WEEK_OFFSET) % 168]
        if math.isnan(level):  # the first week: the hour of the day stands in
            level = state.seasonal[hour_index % 24]
        if math.isnan(level):  # the first day: the recent baseline alone
            return 0.0
        return max(self.ratio * level, level + self.z * math.sqrt(max(level, 1.0)))

    def _roll(self, state: _Minutes, minute: int) -> None:
        gap = minute - state.minute
        if gap <= 0:
            return
        state.hour_total += state.count
        self._season(state, minute)
        state.history.append(state.count)
        # Minutes without any request count as zeros (bounded: at most the history's length).
        for _ in range(min(gap - 1, self.history)):
            state.history.append(0.0)
        while len(state.history) > self.history:
            state.history.popleft()
        state.minute, state.count = minute, 0.0
        state.limit = (
            max(
                spike_limit(state.history, self.z, self.ratio, self.min_count),
                self._seasonal_limit(state, minute),
            )
            if len(state.history) >= self.min_history
            else None
        )

    def add(self, key: K, now: float, amount: float = 1.0) -> Spike | None:
        """Count ``amount`` at ``now``; a ``Spike`` the first time this minute crosses its limit."""
        minute = int(now // 60)
        state = self._keys.setdefault(key, lambda: _Minutes(minute))
        if minute != state.minute:
            self._roll(state, minute)
        state.count += amount
        limit = state.limit
        if limit is None or state.count <= limit or state.fired == minute:
            return None
        state.fired = minute
        history = list(state.history)
        return Spike(state.count, median(history), limit, robust_z(state.count, history))


class SlidingCounter(Generic[K]):
    """Per key: did ``threshold`` events happen within ``window_s``? O(1) per event, ``threshold`` floats a key."""

    def __init__(self, threshold: int, window_s: float, capacity: int = 65_536) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.window_s = window_s
        self._keys: BoundedLru[K, deque[float]] = BoundedLru(capacity)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: K, now: float) -> int | None:
        """Record an event; the number in the window when it reaches the threshold, else None."""
        times = self._keys.setdefault(key, lambda: deque(maxlen=self.threshold))
        times.append(now)
        if len(times) == self.threshold and now - times[0] <= self.window_s:
            return len(times)
        return None

    def count(self, key: K, now: float) -> int:
        times = self._keys.get(key)
        return 0 if times is None else sum(1 for t in times if now - t <= self.window_s)


@dataclass
class _Hours:
    counts: list[int] = field(default_factory=lambda: [0] * 24)
    total: int = 0
    fired: int = -1


class HourProfile(Generic[K]):
    """Per key: the share of its activity in each UTC hour of the day; an hour under ``share`` is unusual."""

    def __init__(self, share: float = 0.005, min_total: int = 2000, capacity: int = 4096) -> None:
        self.share = share
        self.min_total = min_total
        self._keys: BoundedLru[K, _Hours] = BoundedLru(capacity)

    def add(self, key: K, now: float) -> float | None:
        """Record activity at ``now``; the hour's earlier share when it is unusual (once per hour)."""
        hour_index = int(now // 3600)
        hour = hour_index % 24
        state = self._keys.setdefault(key, _Hours)
        prior, total = state.counts[hour], state.total
        state.counts[hour] += 1
        state.total += 1
        if total < self.min_total or state.fired == hour_index:
            return None
        share = prior / total
        if share >= self.share:
            return None
        state.fired = hour_index
        return share
