"""Streaming aggregation: equal to numpy on stacked updates, order/scale invariant, flat in memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregation import (
    EmptyAggregationError,
    InvalidWeightError,
    ModelSpec,
    SpecMismatchError,
    StreamingSum,
    WeightedMean,
    apply_delta,
    delta,
)
from tests.aggregation.helpers import Update, model_specs, random_update, small_spec, updates

weights = st.floats(0.01, 1e4, allow_nan=False)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[ModelSpec, list[Update], list[float]]:
    spec = draw(model_specs())
    k = draw(st.integers(1, 8))
    return spec, [draw(updates(spec)) for _ in range(k)], [draw(weights) for _ in range(k)]


def fold(spec: ModelSpec, batch: list[Update], ws: list[float]) -> WeightedMean:
    mean = WeightedMean(spec)
    for u, w in zip(batch, ws, strict=True):
        mean.add(u, w)
    return mean


@settings(max_examples=60, deadline=None)
@given(case=rounds())
def test_streaming_weighted_mean_equals_numpy_on_the_stacked_updates(
    case: tuple[ModelSpec, list[Update], list[float]],
) -> None:
    # Prepare
    spec, batch, ws = case

    # Execute
    mean = fold(spec, batch, ws)
    got64, got = mean.result_float64(), mean.result()

    # Assert
    for e in spec:
        stacked = np.stack([u[e.name].astype(np.float64) for u in batch])
        expected = np.average(stacked, axis=0, weights=ws)
        np.testing.assert_allclose(got64[e.name], expected, rtol=1e-9, atol=1e-9)
        assert got[e.name].dtype == e.dtype and got[e.name].shape == e.shape
        np.testing.assert_allclose(
            got[e.name], expected.astype(e.dtype), rtol=2 * np.finfo(e.dtype).eps, atol=1e-9
        )
    assert mean.count == len(batch)
    assert mean.total_weight == pytest.approx(sum(ws))


@settings(max_examples=40, deadline=None)
@given(case=rounds(), data=st.data())
def test_the_order_of_arrival_does_not_matter(
    case: tuple[ModelSpec, list[Update], list[float]], data: st.DataObject
) -> None:
    # Prepare
    spec, batch, ws = case
    order = data.draw(st.permutations(range(len(batch))))

    # Execute
    forward = fold(spec, batch, ws).result_float64()
    shuffled = fold(spec, [batch[i] for i in order], [ws[i] for i in order]).result_float64()

    # Assert
    for name in spec.names:
        np.testing.assert_allclose(shuffled[name], forward[name], rtol=1e-12, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(case=rounds(), factor=st.floats(1e-3, 1e3))
def test_scaling_all_weights_does_not_change_the_mean(
    case: tuple[ModelSpec, list[Update], list[float]], factor: float
) -> None:
    # Prepare
    spec, batch, ws = case

    # Execute
    plain = fold(spec, batch, ws).result_float64()
    scaled = fold(spec, batch, [w * factor for w in ws]).result_float64()

    # Assert
    for name in spec.names:
        np.testing.assert_allclose(scaled[name], plain[name], rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(case=rounds())
def test_the_streaming_sum_equals_numpy_sum(case: tuple[ModelSpec, list[Update], list[float]]) -> None:
    # Prepare
    spec, batch, _ = case
    total = StreamingSum(spec)

    # Execute
    for u in batch:
        total.add(u)

    # Assert
    for e in spec:
        expected = np.sum([u[e.name].astype(np.float64) for u in batch], axis=0)
        np.testing.assert_allclose(total.result_float64()[e.name], expected, rtol=1e-12, atol=1e-9)


def test_averaging_deltas_and_applying_them_equals_averaging_full_weights() -> None:
    # Prepare
    spec = small_spec()
    rng = np.random.default_rng(7)
    global_weights = random_update(spec, rng)
    batch = [
        {
            k: v + np.float32(0.01) * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in global_weights.items()
        }
        for _ in range(5)
    ]
    ws = [10.0, 20.0, 5.0, 1.0, 64.0]

    # Execute
    full = fold(spec, batch, ws).result()
    deltas = fold(spec, [delta(u, global_weights, spec) for u in batch], ws).result_float64()
    via_deltas = apply_delta(global_weights, deltas, spec)

    # Assert
    for e in spec:
        assert via_deltas[e.name].dtype == e.dtype
        np.testing.assert_allclose(via_deltas[e.name], full[e.name], rtol=1e-6, atol=1e-6)


def test_integer_arrays_are_rounded_back_to_their_dtype() -> None:
    # Prepare: BatchNorm-style counters.
    spec = ModelSpec.from_arrays({"num_batches_tracked": np.array(0, np.int64)})
    mean = WeightedMean(spec)

    # Execute
    mean.add({"num_batches_tracked": np.array(10, np.int64)}, 1)
    mean.add({"num_batches_tracked": np.array(13, np.int64)}, 1)
    result = mean.result()["num_batches_tracked"]

    # Assert
    assert result.dtype == np.int64 and int(result) == 12  # 11.5 rounds half to even


def test_memory_does_not_grow_with_the_number_of_updates() -> None:
    # Prepare: a 1M-parameter model, updates generated one at a time and dropped after add.
    spec = ModelSpec.from_arrays({"w": np.zeros((1000, 1000), np.float32)})

    def peak_traced(k: int) -> int:
        rng = np.random.default_rng(0)
        tracemalloc.start()
        try:
            mean = WeightedMean(spec)
            for _ in range(k):
                mean.add({"w": rng.random((1000, 1000), dtype=np.float32)}, 3.0)
            mean.result()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # Execute
    few, many = peak_traced(2), peak_traced(30)

    # Assert: 30 float32 updates would be 120 MB if they were kept; allow 1 MB of noise.
    assert abs(many - few) < 1_000_000
    assert few < 3.5 * spec.nbytes  # float64 accumulators (2x) + one update or the result (1x)


def test_a_shape_that_would_broadcast_is_refused() -> None:
    # Prepare
    spec = small_spec()
    bad = random_update(spec, np.random.default_rng(0))
    bad["layer.bias"] = bad["layer.bias"][:1]
    mean = WeightedMean(spec)

    # Execute / Assert
    with pytest.raises(SpecMismatchError):
        mean.add(bad, 1.0)
    assert mean.count == 0


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_an_invalid_weight_is_refused(weight: float) -> None:
    # Prepare
    spec = small_spec()
    mean = WeightedMean(spec)

    # Execute / Assert
    with pytest.raises(InvalidWeightError):
        mean.add(random_update(spec, np.random.default_rng(0)), weight)
    assert mean.count == 0 and mean.total_weight == 0.0


def test_an_empty_mean_has_no_result() -> None:
    # Prepare
    mean = WeightedMean(small_spec())

    # Execute / Assert
    with pytest.raises(EmptyAggregationError):
        mean.result()
    assert WeightedMean.streaming and StreamingSum.streaming
