"""Byzantine-robust aggregators: FedMedian, FedTrimmedAvg, Krum / Multi-Krum.

These are NOT streaming: a coordinate-wise median or a pairwise-distance rule needs every update at
once. They keep a copy of each added update, so memory is K x model size (K updates) plus, during
`result()`, one block of K x `_BLOCK_ELEMENTS / K` float64 values — no K x model float64 stack.
Semantics follow Flower's strategies of the same names (median and trimmed mean ignore weights;
Krum averages the selected updates weighted by example count), so choosing one in fl_server gives
what a Flower user expects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from aggregation.errors import EmptyAggregationError
from aggregation.ops import cast_like_spec
from aggregation.spec import Arrays, ModelSpec, require_weight
from aggregation.streaming import WeightedMean

log = logging.getLogger("accute.aggregation")

#: An update is an outlier when its distance to the coordinate-wise median exceeds this many times
#: the median of all updates' distances (a robust scale: honest updates of one round cluster).
OUTLIER_FACTOR = 3.0

_BLOCK_ELEMENTS = 1 << 22
"""K x columns per block: 32 MiB of float64."""

Reducer = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]
"""K x columns block → one value per column."""


class _Buffered:
    """Keeps copies of all updates; subclasses turn them into a result."""

    streaming: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._updates: list[dict[str, npt.NDArray[Any]]] = []
        self._weights: list[float] = []

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def count(self) -> int:
        return len(self._updates)

    def add(self, update: Arrays, weight: float = 1.0) -> None:
        self._spec.require(update, check_dtype=False)
        w = require_weight(weight)
        # A copy: the caller may reuse or mutate its buffers before result() runs.
        self._updates.append({e.name: np.array(update[e.name], copy=True) for e in self._spec})
        self._weights.append(w)

    def result(self) -> dict[str, npt.NDArray[Any]]:
        raise NotImplementedError

    def used_weights(self) -> list[float]:
        """Each update's share of the result, in ``add`` order (sums to 1): what the aggregator
        actually used, not what the update claimed. Median and trimmed mean give every update an
        equal say, whatever its weight."""
        return [1.0 / self.count] * self.count if self.count else []

    def median_distances(self) -> npt.NDArray[np.float64]:
        """Each update's L2 distance to the coordinate-wise median of all of them."""
        self._require_some()
        squared = np.zeros(self.count, dtype=np.float64)
        for e in self._spec:
            for _, block in self._blocks(e.name):
                squared += ((block - np.median(block, axis=0)) ** 2).sum(axis=1)
        distances: npt.NDArray[np.float64] = np.sqrt(squared)
        return distances

    def outliers(self, factor: float = OUTLIER_FACTOR) -> list[int]:
        """Indices (``add`` order) of updates far from the round's median; none below 3 updates."""
        if self.count < 3:
            return []
        distances = self.median_distances()
        scale = float(np.median(distances))
        if scale <= 0.0:
            return [i for i, d in enumerate(distances) if d > 0.0]
        return [i for i, d in enumerate(distances) if d > factor * scale]

    def _require_some(self) -> None:
        if not self._updates:
            raise EmptyAggregationError("no update was added; nothing to aggregate")

    def _blocks(self, name: str) -> Iterator[tuple[slice, npt.NDArray[np.float64]]]:
        """(columns, K x columns float64 block) over the flattened array `name`."""
        size = self._updates[0][name].size
        flats = [u[name].reshape(-1) for u in self._updates]
        cols = max(1, _BLOCK_ELEMENTS // len(flats))
        for start in range(0, size, cols):
            s = slice(start, min(start + cols, size))
            yield s, np.stack([f[s] for f in flats]).astype(np.float64, copy=False)

    def _coordinatewise(self, reduce: Reducer) -> dict[str, npt.NDArray[Any]]:
        self._require_some()
        out: dict[str, npt.NDArray[np.float64]] = {}
        for e in self._spec:
            flat = np.empty(e.size, dtype=np.float64)
            for s, block in self._blocks(e.name):
                flat[s] = reduce(block)
            out[e.name] = flat.reshape(e.shape)
        return cast_like_spec(out, self._spec)


class Median(_Buffered):
    """Coordinate-wise median (FedMedian); weights are checked but do not enter the median."""

    def result(self) -> dict[str, npt.NDArray[Any]]:
        return self._coordinatewise(lambda block: np.median(block, axis=0))


class TrimmedMean(_Buffered):
    """Coordinate-wise mean after dropping the `trim_fraction` smallest and largest values (FedTrimmedAvg).

    Unlike Flower's ``trim_mean``, at least one value is trimmed from each side once there are three
    updates: with β = 0.2 Flower trims nothing below five, so one boosted update passed untouched.
    Below three nothing can be trimmed, and a warning says so.
    """

    def __init__(self, spec: ModelSpec, trim_fraction: float = 0.2) -> None:
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        super().__init__(spec)
        self.trim_fraction = trim_fraction

    def trimmed_per_side(self, n: int | None = None) -> int:
        n = self.count if n is None else n
        if n < 3:
            return 0
        return max(1, int(self.trim_fraction * n))

    def result(self) -> dict[str, npt.NDArray[Any]]:
        n = self.count
        low = self.trimmed_per_side(n)
        if n and low == 0:
            log.warning("trimmed mean of %d update(s) trims nothing: it needs at least 3 to trim", n)
        high = n - low

        def trimmed(block: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            part = np.partition(block, (low, high - 1), axis=0)
            mean: npt.NDArray[np.float64] = np.mean(part[low:high], axis=0)
            return mean

        return self._coordinatewise(trimmed)


class Krum(_Buffered):
    """Krum (`num_selected=1`) or Multi-Krum: average the updates closest to their neighbours.

    Each update scores the sum of squared L2 distances to its n - f - 2 nearest others (at least
    one), f = `num_malicious`; the `num_selected` lowest scores are averaged, weighted by example
    count. Krum's guarantee needs n ≥ 2f + 3; with fewer updates it still selects, and with fewer
    than `num_selected` it averages them all (as Flower does, so a dropout never fails a round).
    `selected` holds the chosen indices, in `add` order, after `result()`.
    """

    def __init__(self, spec: ModelSpec, num_malicious: int = 0, num_selected: int = 1) -> None:
        if num_malicious < 0 or num_selected < 1:
            raise ValueError("num_malicious must be ≥ 0 and num_selected ≥ 1")
        super().__init__(spec)
        self.num_malicious = num_malicious
        self.num_selected = num_selected
        self.selected: tuple[int, ...] = ()

    def distances(self) -> npt.NDArray[np.float64]:
        """K x K squared L2 distances between the updates taken as flat vectors."""
        n = self.count
        d = np.zeros((n, n), dtype=np.float64)
        for e in self._spec:
            for _, block in self._blocks(e.name):
                # Centring each coordinate leaves distances unchanged and avoids cancellation in
                # ‖x‖² + ‖y‖² - 2x·y when updates are close to one another (they usually are).
                block = block - block.mean(axis=0)
                gram = block @ block.T
                sq = np.diag(gram)
                d += sq[:, None] + sq[None, :] - 2.0 * gram
        np.maximum(d, 0.0, out=d)
        np.fill_diagonal(d, 0.0)
        return d

    def scores(self) -> npt.NDArray[np.float64]:
        n = self.count
        if n == 1:
            return np.zeros(1)
        d = self.distances()
        np.fill_diagonal(d, np.inf)
        closest = min(max(1, n - self.num_malicious - 2), n - 1)
        scores: npt.NDArray[np.float64] = np.sort(d, axis=1)[:, :closest].sum(axis=1)
        return scores

    def used_weights(self) -> list[float]:
        """Only the selected updates count, by their weights; the others count zero (after ``result``)."""
        total = sum(self._weights[i] for i in self.selected)
        return [
            self._weights[i] / total if i in self.selected and total > 0 else 0.0 for i in range(self.count)
        ]

    def outliers(self, factor: float = OUTLIER_FACTOR) -> list[int]:
        """Far from the median, plus the ``num_malicious`` worst Krum scores (the updates Krum distrusts most)."""
        flagged = set(super().outliers(factor))
        if self.num_malicious and self.count >= 3:
            order = np.argsort(self.scores(), kind="stable")
            flagged |= {int(i) for i in order[-self.num_malicious :]}
        return sorted(flagged)

    def result(self) -> dict[str, npt.NDArray[Any]]:
        self._require_some()
        order = np.argsort(self.scores(), kind="stable")
        self.selected = tuple(int(i) for i in order[: self.num_selected])
        mean = WeightedMean(self._spec)
        for i in self.selected:
            mean.add(self._updates[i], self._weights[i])
        return mean.result()
