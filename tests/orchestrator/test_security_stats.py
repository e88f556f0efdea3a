"""The detectors' arithmetic: hypothesis properties, and the false-positive rate on normal traffic.

The replay: 14 days of per-minute requests for 12 organizations of different sizes (peaks of 3 to
600 requests a minute), with a working day (night 4 % of peak, a morning ramp, a lunch dip,
evenings), quiet weekends, day-to-day variation (lognormal, 15 %) and overdispersed noise
(gamma-Poisson). Every minute is judged by ``RateBaseline`` with the default rule; the false
positives are the minutes it flags in this normal traffic. Then 5x spikes are injected at random
minutes and the share detected is measured. Both numbers are printed (``-s``) and in BENCHMARKS.md.
"""

from __future__ import annotations

import math
import random
from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.security.stats import (
    BoundedLru,
    Ewma,
    HourProfile,
    RateBaseline,
    SlidingCounter,
    mad,
    median,
    robust_z,
    spike_limit,
)
from schema.anomaly_policy import DEFAULT_RULES

DAYS = 14
PEAKS = (3, 5, 10, 20, 40, 60, 100, 150, 250, 400, 500, 600)

counts = st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=80)


def _profile(minute_of_week: int) -> float:
    """Share of the peak rate at this minute of the week (Monday 00:00 = 0)."""
    day, minute = divmod(minute_of_week % (7 * 1440), 1440)
    hour = minute / 60
    if hour < 6:
        level = 0.04
    elif hour < 9:
        level = 0.04 + 0.96 * (hour - 6) / 3
    elif hour < 12:
        level = 1.0
    elif hour < 13:
        level = 0.7
    elif hour < 17:
        level = 0.95
    elif hour < 22:
        level = 0.95 - 0.85 * (hour - 17) / 5
    else:
        level = 0.06
    return level * (0.2 if day >= 5 else 1.0)


def normal_traffic(peak: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    minutes = DAYS * 1440
    day_factor = np.repeat(rng.lognormal(0.0, 0.15, DAYS), 1440)
    rate = peak * np.array([_profile(m) for m in range(minutes)]) * day_factor
    overdispersed = rate * rng.gamma(20.0, 1 / 20.0, minutes)
    return rng.poisson(overdispersed)


def replay(series: np.ndarray, spikes: set[int] | None = None, factor: float = 5.0) -> tuple[set[int], int]:
    """Minutes flagged, and minutes judged (after the warm-up), by the default volume_spike rule."""
    rule = DEFAULT_RULES["volume_spike"]
    detector: RateBaseline[str] = RateBaseline(
        z=rule.z,
        ratio=rule.ratio,
        min_count=rule.min_count,
        history=rule.window_s // 60,
        min_history=rule.min_history,
    )
    flagged: set[int] = set()
    for minute, count in enumerate(series):
        value = float(count)
        if spikes and minute in spikes:
            value = value * factor + 50
        if detector.add("org", minute * 60.0, value) is not None:
            flagged.add(minute)
    return flagged, len(series) - rule.min_history


def test_false_positive_rate_on_normal_traffic_and_detection_of_spikes() -> None:
    # Prepare: 12 organizations' normal traffic; 40 random spike minutes each (business hours or not).
    rng = random.Random(11)
    false_positives = judged = detected = injected = 0
    for index, peak in enumerate(PEAKS):
        series = normal_traffic(peak, seed=index)

        # Execute: replay the normal series, then the same series with spikes.
        flagged, minutes = replay(series)
        spikes = set(rng.sample(range(60, len(series)), 40))
        # A spike must not follow another within the baseline's hour (it would be part of it).
        spaced = sorted(spikes)
        kept = {m for i, m in enumerate(spaced) if i == 0 or m - spaced[i - 1] > 60}
        caught, _ = replay(series, kept)
        false_positives += len(flagged)
        judged += minutes
        detected += len(kept & caught)
        injected += len(kept)

    # Assert: under one false alarm per 10 000 organization-minutes (measured: 7.9e-5, all on the first
    # day, before the hour-of-day levels exist); 9 spikes in 10 caught (measured: 91.6 %; the misses
    # are mostly weekends of the first week, judged against weekday levels, and evening hours).
    fp_rate = false_positives / judged
    detection = detected / injected
    print(
        f"\nvolume_spike replay: {judged} org-minutes, {false_positives} false positives "
        f"(rate {fp_rate:.2e}), spikes detected {detected}/{injected} ({detection:.1%})"
    )
    assert fp_rate < 1e-4
    assert detection >= 0.9


@given(counts, st.integers(min_value=0, max_value=10_000))
@settings(max_examples=200, deadline=None)
def test_robust_z_is_monotone_and_non_positive_at_or_below_the_median(history: list[int], value: int) -> None:
    values = [float(v) for v in history]
    mid = median(values)
    assert robust_z(value, values) <= robust_z(value + 1, values)
    if value <= mid:
        assert robust_z(value, values) <= 0


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=5, max_size=80), st.integers(min_value=0))
@settings(max_examples=200, deadline=None)
def test_one_outlier_in_the_history_cannot_move_the_median_outside_the_data(
    history: list[int], index: int
) -> None:
    # A mean moves without bound; the median stays between the original extremes (breakdown point).
    values = [float(v) for v in history]
    poisoned = list(values)
    poisoned[index % len(values)] = 1e12
    assert min(values) <= median(poisoned) <= max(values)
    assert mad(poisoned) <= max(values) - min(values)


@given(
    counts, st.floats(min_value=0, max_value=50), st.floats(min_value=1, max_value=10), st.integers(0, 1000)
)
@settings(max_examples=200, deadline=None)
def test_spike_limit_is_above_median_ratio_and_floor(
    history: list[int], z: float, ratio: float, floor: int
) -> None:
    values = [float(v) for v in history]
    limit = spike_limit(values, z, ratio, floor)
    assert limit >= median(values) and limit >= ratio * median(values) - 1e-9 and limit >= floor


@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=200),
    st.floats(min_value=0.01, max_value=1),
)
@settings(max_examples=200, deadline=None)
def test_ewma_mean_stays_within_the_inputs_and_a_constant_has_zero_z(xs: list[float], alpha: float) -> None:
    ewma = Ewma(alpha)
    for x in xs:
        ewma.update(x)
    assert ewma.mean is not None
    assert min(xs) - 1e-6 * max(1.0, abs(min(xs))) <= ewma.mean <= max(xs) + 1e-6 * max(1.0, abs(max(xs)))
    assert ewma.var >= 0
    constant = Ewma(alpha)
    for _ in range(20):
        constant.update(7.0)
    assert constant.z(7.0) == 0


@given(
    st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=100),
    st.integers(1, 10),
    st.floats(0.5, 30),
)
@settings(max_examples=200, deadline=None)
def test_sliding_counter_fires_exactly_when_threshold_events_fall_in_the_window(
    gaps: list[float], threshold: int, window: float
) -> None:
    counter: SlidingCounter[str] = SlidingCounter(threshold, window)
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        times.append(now)
        recent = deque(times[-threshold:])
        expected = len(recent) == threshold and now - recent[0] <= window
        assert (counter.add("k", now) is not None) == expected


@given(st.integers(min_value=1, max_value=29))
@settings(max_examples=30, deadline=None)
def test_rate_baseline_never_fires_before_its_warm_up(minutes: int) -> None:
    detector: RateBaseline[str] = RateBaseline(min_history=30)
    assert all(detector.add("k", m * 60.0, 10_000.0) is None for m in range(minutes))


def test_state_is_bounded_by_capacity() -> None:
    # A stranger from 100 000 addresses: the detector keeps at most its capacity.
    counter: SlidingCounter[str] = SlidingCounter(5, 60, capacity=1000)
    for i in range(100_000):
        counter.add(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", float(i))
    assert len(counter) == 1000
    lru: BoundedLru[int, int] = BoundedLru(3)
    for i in range(10):
        lru.setdefault(i, lambda i=i: i)  # type: ignore[misc]
    assert len(lru) == 3 and 9 in lru and 0 not in lru


def test_hour_profile_flags_an_hour_the_organization_never_works() -> None:
    # Prepare: 3 000 requests spread over 09:00-17:00 UTC.
    profile: HourProfile[str] = HourProfile(share=0.005, min_total=2000)
    for i in range(3000):
        hour = 9 + i % 8
        assert profile.add("org", hour * 3600.0 + (i % 60)) is None
    # Execute / Assert: 03:00 is unusual (once per hour), 10:00 is not.
    assert profile.add("org", 3 * 3600.0) == 0.0
    assert profile.add("org", 3 * 3600.0 + 5) is None
    assert profile.add("org", 10 * 3600.0) is None
    assert math.isclose(median([1.0, 3.0]), 2.0)
