"""Streaming aggregation: fold each update into float64 running sums as it arrives.

Memory is the float64 accumulators (2x a float32 model) plus one chunk, whatever the number of
tenants, so a server can drop each reply right after `add`. The same classes aggregate full
weights or deltas (update - global, see `ops.delta` / `ops.apply_delta`): they sum whatever arrays
they are given.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from aggregation.errors import EmptyAggregationError
from aggregation.ops import Float64Arrays, accumulate, cast_like_spec
from aggregation.spec import Arrays, ModelSpec, require_weight


@runtime_checkable
class Aggregator(Protocol):
    """What every aggregator offers a server: add updates one by one, then read the result."""

    streaming: ClassVar[bool]
    """True when memory does not grow with the number of updates."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def count(self) -> int:
        """Updates added so far."""
        ...

    def add(self, update: Arrays, weight: float = 1.0) -> None:
        """Take one (validated) update; `weight` is its example count where the rule weights."""
        ...

    def result(self) -> dict[str, npt.NDArray[Any]]:
        """The aggregate in the spec's dtypes."""
        ...

    def used_weights(self) -> list[float]:
        """Each update's share of the result as actually used (``add`` order, sums to 1)."""
        ...


class StreamingSum:
    """Σ weightᵢ · updateᵢ in float64: the plain sum central DP adds noise to."""

    streaming: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._acc = spec.zeros()
        self._count = 0

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: Arrays, weight: float = 1.0) -> None:
        self._spec.require(update, check_dtype=False)
        w = require_weight(weight)
        for e in self._spec:
            accumulate(self._acc[e.name], update[e.name], w)
        self._count += 1

    def result_float64(self) -> Float64Arrays:
        """A copy of the float64 sums (zeros when nothing was added: the sum of no updates)."""
        return {name: a.copy() for name, a in self._acc.items()}

    def result(self) -> dict[str, npt.NDArray[Any]]:
        return cast_like_spec(self._acc, self._spec)


class WeightedMean(StreamingSum):
    """Σ wᵢ · updateᵢ / Σ wᵢ (FedAvg with wᵢ = example count), streaming."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self._total_weight = 0.0
        self._weights: list[float] = []

    @property
    def total_weight(self) -> float:
        return self._total_weight

    def add(self, update: Arrays, weight: float = 1.0) -> None:
        super().add(update, weight)
        self._total_weight += float(weight)
        self._weights.append(float(weight))

    def used_weights(self) -> list[float]:
        """Each update's share of the mean, in ``add`` order (one float per update: memory stays flat)."""
        return [w / self._total_weight for w in self._weights] if self._total_weight > 0 else []

    def _require_some(self) -> None:
        if self._count == 0:
            raise EmptyAggregationError("no update was added; nothing to average")

    def result_float64(self) -> Float64Arrays:
        self._require_some()
        return {name: np.asarray(a / self._total_weight) for name, a in self._acc.items()}

    def result(self) -> dict[str, npt.NDArray[Any]]:
        self._require_some()
        return cast_like_spec(self._acc, self._spec, scale=1.0 / self._total_weight)
