"""Central DP: clipped sum plus injected noise of std z*C, drawn once, never from np.random implicitly."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from aggregation import (
    AggregatorFinalizedError,
    CentralDPSum,
    EmptyAggregationError,
    MissingNoiseSourceError,
    apply_delta,
    delta,
    global_norm,
)
from tests.aggregation.helpers import random_update, small_spec


class RecordingNoise:
    """A deterministic noise source that records every call."""

    def __init__(self, value: float = 0.5) -> None:
        self.calls: list[tuple[tuple[int, ...], float]] = []
        self.value = value

    def __call__(self, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float64]:
        self.calls.append((shape, std))
        return np.full(shape, self.value * std)


def test_noise_is_required_when_the_noise_multiplier_is_positive() -> None:
    # Execute / Assert
    with pytest.raises(MissingNoiseSourceError):
        CentralDPSum(small_spec(), clipping_norm=1.0, noise_multiplier=1.1)
    assert CentralDPSum(small_spec(), clipping_norm=1.0, noise_multiplier=0.0).noise_std == 0.0


def test_the_result_is_the_clipped_sum_plus_noise_of_std_z_times_c_over_the_denominator() -> None:
    # Prepare: one small delta (kept) and one large delta (clipped to C).
    spec = small_spec()
    rng = np.random.default_rng(4)
    small = random_update(spec, rng, scale=1e-3)
    large = random_update(spec, rng, scale=100.0)
    noise = RecordingNoise()
    dp = CentralDPSum(spec, clipping_norm=2.0, noise_multiplier=1.5, noise=noise)

    # Execute
    factors = [dp.add(small), dp.add(large)]
    result = dp.result(denominator=4.0)

    # Assert
    assert factors[0] == 1.0 and factors[1] == pytest.approx(2.0 / global_norm(large))
    assert dp.clipped_count == 1 and dp.count == 2
    assert noise.calls == [(e.shape, 3.0) for e in spec]
    for name in spec.names:
        expected = (
            small[name].astype(np.float64) + large[name].astype(np.float64) * factors[1] + 0.5 * 3.0
        ) / 4.0
        np.testing.assert_allclose(result[name], expected, rtol=1e-6, atol=1e-7)
        assert result[name].dtype == np.float64


def test_noise_is_drawn_once_and_the_release_is_final() -> None:
    # Prepare
    spec = small_spec()
    noise = RecordingNoise()
    dp = CentralDPSum(spec, clipping_norm=1.0, noise_multiplier=1.0, noise=noise)
    dp.add(random_update(spec, np.random.default_rng(0)))

    # Execute
    first, again, total = dp.result(), dp.result(), dp.noisy_sum()

    # Assert
    assert len(noise.calls) == len(spec)
    for name in spec.names:
        np.testing.assert_array_equal(first[name], again[name])
        np.testing.assert_array_equal(total[name], first[name])
    with pytest.raises(AggregatorFinalizedError):
        dp.add(random_update(spec, np.random.default_rng(1)))


def test_a_noise_source_returning_the_wrong_shape_is_refused() -> None:
    # Prepare
    spec = small_spec()
    dp = CentralDPSum(spec, clipping_norm=1.0, noise_multiplier=1.0, noise=lambda shape, std: np.zeros(7))
    dp.add(random_update(spec, np.random.default_rng(0)))

    # Execute / Assert
    with pytest.raises(ValueError, match="noise source"):
        dp.result()


def test_an_empty_round_needs_an_explicit_denominator() -> None:
    # Prepare
    spec = small_spec()
    noise = RecordingNoise()
    dp = CentralDPSum(spec, clipping_norm=1.0, noise_multiplier=1.0, noise=noise)

    # Execute / Assert
    with pytest.raises(EmptyAggregationError):
        dp.result()
    released = dp.result(denominator=10.0)
    np.testing.assert_allclose(released["layer.bias"], np.full(3, 0.5 / 10.0))


def test_a_round_with_deltas_moves_the_global_model_by_at_most_c_plus_noise() -> None:
    # Prepare: nodes send full weights; the server aggregates clipped deltas.
    spec = small_spec()
    rng = np.random.default_rng(9)
    global_weights = random_update(spec, rng)
    replies = [
        {k: v + random_update(spec, rng, scale=5.0)[k] for k, v in global_weights.items()} for _ in range(3)
    ]
    dp = CentralDPSum(spec, clipping_norm=0.5, noise_multiplier=1.0, noise=RecordingNoise(value=0.0))

    # Execute
    for reply in replies:
        dp.add(delta(reply, global_weights, spec))
    new_global = apply_delta(global_weights, dp.result(), spec)

    # Assert: zero noise, so the step is a mean of vectors of norm ≤ C.
    assert {k: v.dtype for k, v in new_global.items()} == {e.name: e.dtype for e in spec}
    assert global_norm(new_global, global_weights) <= 0.5 + 1e-6
    assert dp.clipped_count == 3


def test_a_fixed_denominator_releases_noise_even_without_any_update() -> None:
    # Prepare: a round where nobody's update was accepted.
    noise = RecordingNoise(value=1.0)
    dp = CentralDPSum(small_spec(), clipping_norm=2.0, noise_multiplier=3.0, noise=noise)

    # Execute
    released = dp.result(denominator=4.0)

    # Assert: noise of std z*C over the public denominator, never an un-noised zero.
    assert noise.calls and all(std == 6.0 for _, std in noise.calls)
    for array in released.values():
        np.testing.assert_allclose(array, 6.0 / 4.0)


def test_the_fixed_denominator_keeps_the_count_out_of_the_release() -> None:
    # Two rounds with the same clipped sum but different numbers of contributors release the same value.
    spec = small_spec()
    one, two = (CentralDPSum(spec, clipping_norm=100.0, noise_multiplier=0.0) for _ in range(2))
    update = random_update(spec, np.random.default_rng(1))
    zero = {name: np.zeros_like(a) for name, a in update.items()}
    one.add(update)
    two.add(update)
    two.add(zero)
    a, b = one.result(denominator=5.0), two.result(denominator=5.0)
    for name in a:
        np.testing.assert_allclose(a[name], b[name])
    assert not all(np.allclose(one.result()[n], two.result()[n]) for n in a)  # observed counts differ
