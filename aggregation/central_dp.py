"""Central DP aggregation: clip each delta to L2 norm C, sum, add Gaussian noise of std z·C once.

Streaming like `StreamingSum`. The noise comes from an injected `NoiseSource` (the product's
cryptographically secure sampler lives in privacy/); there is deliberately no default, because a
silent fall-back to `np.random` would void the privacy guarantee. The noisy sum is drawn once and
cached: asking for the result again returns the same release, and adding after it is refused, so a
round can never publish two independent noisy views of the same sum.

Typical round (nodes send full weights)::

    dp = CentralDPSum(spec, clipping_norm=C, noise_multiplier=z, noise=secure_gaussian)
    for update in accepted_updates:
        dp.add(delta(update, global_weights, spec))
    new_global = apply_delta(global_weights, dp.result(denominator=expected_participants), spec)

Always pass the public, fixed expected number of participants as the denominator (the governed
server uses fraction x admitted tenants): the observed count (the default, kept for non-DP uses)
depends on who took part, and an audit measured epsilon >= 5.6 for a claimed 2.2 when it was used.
An empty sum still releases noise over that denominator: a round with no accepted update must
not publish an un-noised "unchanged" model whose difference from the noisy one reveals the count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregation.errors import AggregatorFinalizedError, EmptyAggregationError, MissingNoiseSourceError
from aggregation.ops import Float64Arrays, clip_to_norm
from aggregation.spec import Arrays, ModelSpec
from aggregation.streaming import StreamingSum

NoiseSource = Callable[[tuple[int, ...], float], npt.NDArray[Any]]
"""noise(shape, std) → array of that shape with i.i.d. N(0, std²) entries."""


class CentralDPSum:
    """Σ clip(deltaᵢ, C) + N(0, (z·C)²) per coordinate; memory independent of the number of tenants."""

    streaming = True

    def __init__(
        self,
        spec: ModelSpec,
        *,
        clipping_norm: float,
        noise_multiplier: float,
        noise: NoiseSource | None = None,
    ) -> None:
        if not (math.isfinite(clipping_norm) and clipping_norm > 0):
            raise ValueError(f"clipping_norm must be a finite positive number, got {clipping_norm}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be a finite number ≥ 0, got {noise_multiplier}")
        if noise_multiplier > 0 and noise is None:
            raise MissingNoiseSourceError(
                "central DP needs a noise source (privacy.secure_noise); np.random is never used implicitly"
            )
        self._spec = spec
        self.clipping_norm = float(clipping_norm)
        self.noise_multiplier = float(noise_multiplier)
        self._noise = noise
        self._sum = StreamingSum(spec)
        self._clipped = 0
        self._released: Float64Arrays | None = None

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def count(self) -> int:
        return self._sum.count

    @property
    def clipped_count(self) -> int:
        """How many deltas were scaled down (for logs and adaptive clipping; not itself private)."""
        return self._clipped

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise added to each coordinate of the sum."""
        return self.noise_multiplier * self.clipping_norm

    def add(self, delta_arrays: Arrays) -> float:
        """Clip one delta (update - global) to the clipping norm and fold it in; returns the clip factor."""
        if self._released is not None:
            raise AggregatorFinalizedError("the noisy sum was already released; start a new aggregator")
        self._spec.require(delta_arrays, check_dtype=False)
        ordered = {name: np.asarray(delta_arrays[name], dtype=np.float64) for name in self._spec.names}
        clipped, factor = clip_to_norm(ordered, self.clipping_norm)
        self._sum.add(clipped)
        if factor < 1.0:
            self._clipped += 1
        return factor

    def _release(self) -> Float64Arrays:
        if self._released is None:
            released = self._sum.result_float64()
            std = self.noise_std
            if std > 0:
                assert self._noise is not None  # guaranteed by __init__
                for e in self._spec:
                    z = np.asarray(self._noise(e.shape, std), dtype=np.float64)
                    if z.shape != e.shape or not np.all(np.isfinite(z)):
                        raise ValueError(f"noise source returned a bad array for {e.name} (shape {z.shape})")
                    released[e.name] += z
            self._released = released
        return self._released

    def noisy_sum(self) -> Float64Arrays:
        """The clipped sum plus noise, drawn on the first call and the same on every later one."""
        return {name: a.copy() for name, a in self._release().items()}

    def result(self, denominator: float | None = None) -> Float64Arrays:
        """Noisy sum / denominator (default: the number of deltas added), as float64 deltas."""
        d = float(self.count if denominator is None else denominator)
        if d == 0 and denominator is None:
            raise EmptyAggregationError("no delta was added; pass the expected number of participants")
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"denominator must be a finite positive number, got {denominator}")
        return {name: np.asarray(a / d) for name, a in self._release().items()}
