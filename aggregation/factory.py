"""Pick an aggregator by the name of the Flower strategy it mirrors, e.g. from the run config."""

from __future__ import annotations

from typing import Literal, get_args

from aggregation.robust import Krum, Median, TrimmedMean
from aggregation.spec import ModelSpec
from aggregation.streaming import Aggregator, WeightedMean

AggregatorKind = Literal["fedavg", "fedmedian", "fedtrimmedavg", "krum"]
AGGREGATOR_KINDS: tuple[str, ...] = get_args(AggregatorKind)


def make_aggregator(
    kind: str,
    spec: ModelSpec,
    *,
    trim_fraction: float = 0.2,
    num_malicious: int = 0,
    num_selected: int = 1,
) -> Aggregator:
    """A fresh aggregator for one round; defaults match Flower's FedTrimmedAvg (β=0.2) and Krum."""
    if kind == "fedavg":
        return WeightedMean(spec)
    if kind == "fedmedian":
        return Median(spec)
    if kind == "fedtrimmedavg":
        return TrimmedMean(spec, trim_fraction)
    if kind == "krum":
        return Krum(spec, num_malicious, num_selected)
    raise ValueError(f"unknown aggregator {kind!r}; expected one of {', '.join(AGGREGATOR_KINDS)}")
