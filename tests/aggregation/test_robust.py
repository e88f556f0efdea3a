"""Robust aggregators: the same answers as numpy and as Flower's strategies of the same name."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum
from hypothesis import given, settings
from hypothesis import strategies as st

import aggregation.robust as robust
from aggregation import (
    AGGREGATOR_KINDS,
    EmptyAggregationError,
    Krum,
    Median,
    ModelSpec,
    SpecMismatchError,
    TrimmedMean,
    WeightedMean,
    make_aggregator,
)
from aggregation.flwr_adapter import record_from_arrays
from tests.aggregation.helpers import Update, model_specs, random_update, small_spec, updates


@st.composite
def batches(draw: st.DrawFn, min_size: int = 1) -> tuple[ModelSpec, list[Update]]:
    spec = draw(model_specs())
    return spec, [draw(updates(spec)) for _ in range(draw(st.integers(min_size, 9)))]


@settings(max_examples=40, deadline=None)
@given(case=batches())
def test_median_is_the_coordinatewise_median(case: tuple[ModelSpec, list[Update]]) -> None:
    # Prepare
    spec, batch = case
    median = Median(spec)

    # Execute
    for u in batch:
        median.add(u, 5.0)
    got = median.result()

    # Assert
    for e in spec:
        expected = np.median(np.stack([u[e.name].astype(np.float64) for u in batch]), axis=0)
        np.testing.assert_allclose(got[e.name], expected.astype(e.dtype), rtol=2 * np.finfo(e.dtype).eps)
        assert got[e.name].dtype == e.dtype


@settings(max_examples=40, deadline=None)
@given(case=batches(), beta=st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.49]))
def test_trimmed_mean_matches_flowers_trim_mean(case: tuple[ModelSpec, list[Update]], beta: float) -> None:
    """Flower's trim_mean wherever it trims at least one per side; from 3 updates on we always do."""
    # Prepare
    spec, batch = case
    trimmed = TrimmedMean(spec, beta)
    n = len(batch)
    low = int(beta * n) if n < 3 else max(1, int(beta * n))

    # Execute
    for u in batch:
        trimmed.add(u)
    got = trimmed.result()

    # Assert
    assert trimmed.trimmed_per_side() == low
    for e in spec:
        stacked = np.stack([u[e.name].astype(np.float64) for u in batch])
        expected = np.sort(stacked, axis=0)[low : n - low].mean(axis=0)
        tolerance = {"rtol": 4 * np.finfo(e.dtype).eps, "atol": 1e-9}
        np.testing.assert_allclose(got[e.name], expected.astype(e.dtype), **tolerance)  # type: ignore[arg-type]
        if int(beta * n) == low:
            np.testing.assert_allclose(
                got[e.name],
                np.asarray(trim_mean(stacked, beta)).astype(e.dtype),
                **tolerance,  # type: ignore[arg-type]
            )


def test_trimmed_mean_trims_a_boosted_update_that_flower_keeps() -> None:
    # Prepare: three honest updates near 1 and one boosted x50; beta 0.2 (Flower trims nothing below 5)
    spec = ModelSpec.from_arrays({"w": np.zeros(4, dtype=np.float32)})
    honest = [np.full(4, v, dtype=np.float32) for v in (0.9, 1.0, 1.1)]
    boosted = np.full(4, 50.0, dtype=np.float32)
    trimmed = TrimmedMean(spec, 0.2)
    for u in [*honest, boosted]:
        trimmed.add({"w": u})
    # Execute
    got = trimmed.result()["w"]
    flower = trim_mean(np.stack([*honest, boosted]).astype(np.float64), 0.2)
    # Assert
    np.testing.assert_allclose(got, np.full(4, 1.05), rtol=1e-6)
    assert float(np.max(flower)) > 10.0


def test_outliers_and_used_weights_name_the_attacker() -> None:
    # Prepare
    spec = ModelSpec.from_arrays({"w": np.zeros(3, dtype=np.float32)})
    updates = [np.array([1.0, 1.0, 1.0]) + d for d in (0.0, 0.05, -0.05, 0.02)] + [np.full(3, 40.0)]
    weights = [10.0, 10.0, 10.0, 10.0, 1e9]
    median, krum, mean = Median(spec), Krum(spec, num_malicious=1, num_selected=2), WeightedMean(spec)
    for agg in (median, krum, mean):
        for u, w in zip(updates, weights, strict=True):
            agg.add({"w": u.astype(np.float32)}, w)
    # Execute
    krum.result()
    # Assert: the boosted update is flagged by both; Krum gives it no weight; the mean shows its claimed share
    assert median.outliers() == [4]
    assert 4 in krum.outliers()
    assert krum.used_weights()[4] == 0.0 and sum(krum.used_weights()) == pytest.approx(1.0)
    assert median.used_weights() == [0.2] * 5
    assert mean.used_weights()[4] == pytest.approx(1e9 / (1e9 + 40.0))


def as_reply(update: Update, weight: float) -> RecordDict:
    return RecordDict(
        {"arrays": record_from_arrays(update), "metrics": MetricRecord({"num-examples": weight})}
    )


@pytest.mark.parametrize(("n", "f", "m"), [(7, 1, 1), (7, 2, 3), (4, 0, 1), (10, 3, 2)])
def test_krum_selects_what_flowers_multikrum_selects(n: int, f: int, m: int) -> None:
    # Prepare
    spec = small_spec()
    rng = np.random.default_rng(n * 100 + f * 10 + m)
    batch = [random_update(spec, rng, scale=float(rng.uniform(0.5, 3.0))) for _ in range(n)]
    ws = [float(rng.integers(1, 100)) for _ in range(n)]
    krum = Krum(spec, num_malicious=f, num_selected=m)

    # Execute
    for u, w in zip(batch, ws, strict=True):
        krum.add(u, w)
    got = krum.result()
    replies = [as_reply(u, w) for u, w in zip(batch, ws, strict=True)]
    flower_selected = select_multikrum(replies, num_malicious_nodes=f, num_nodes_to_select=m)

    # Assert
    assert [id(replies[i]) for i in krum.selected] == [id(r) for r in flower_selected]
    expected = WeightedMean(spec)
    for i in krum.selected:
        expected.add(batch[i], ws[i])
    for name, value in expected.result().items():
        np.testing.assert_array_equal(got[name], value)


def test_krum_leaves_out_a_far_outlier() -> None:
    # Prepare: five honest updates near 0 and one attacker far away.
    spec = small_spec()
    rng = np.random.default_rng(3)
    honest = [random_update(spec, rng, scale=0.01) for _ in range(5)]
    attacker = {k: np.full_like(v, 50.0) for k, v in honest[0].items()}
    krum = Krum(spec, num_malicious=1, num_selected=3)

    # Execute
    for u in [*honest[:2], attacker, *honest[2:]]:
        krum.add(u, 1.0)
    result = krum.result()

    # Assert
    assert 2 not in krum.selected and len(krum.selected) == 3
    assert max(float(np.max(np.abs(a))) for a in result.values()) < 1.0


def test_krum_with_fewer_updates_than_selected_averages_them_all() -> None:
    # Prepare
    spec = small_spec()
    rng = np.random.default_rng(5)
    krum = Krum(spec, num_malicious=0, num_selected=4)
    batch = [random_update(spec, rng) for _ in range(2)]

    # Execute
    for u in batch:
        krum.add(u, 1.0)
    krum.result()

    # Assert
    assert sorted(krum.selected) == [0, 1]


def test_blockwise_results_do_not_depend_on_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 7 updates of a 12-element array split into blocks of one column.
    spec = small_spec()
    rng = np.random.default_rng(11)
    batch = [random_update(spec, rng) for _ in range(7)]

    def run() -> list[dict[str, np.ndarray]]:
        aggs = [Median(spec), TrimmedMean(spec, 0.2), Krum(spec, 1, 2)]
        for agg in aggs:
            for u in batch:
                agg.add(u, 2.0)
        return [agg.result() for agg in aggs]

    # Execute
    whole = run()
    monkeypatch.setattr(robust, "_BLOCK_ELEMENTS", 7)
    blockwise = run()

    # Assert
    for a, b in zip(whole, blockwise, strict=True):
        for name in spec.names:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-6)


def test_robust_aggregators_keep_copies_of_what_they_are_given() -> None:
    # Prepare
    spec = small_spec()
    update = random_update(spec, np.random.default_rng(2))
    median = Median(spec)
    median.add(update)
    expected = {k: v.copy() for k, v in update.items()}

    # Execute: the caller reuses its buffer.
    update["layer.weight"][:] = 1e6

    # Assert
    np.testing.assert_array_equal(median.result()["layer.weight"], expected["layer.weight"])


@pytest.mark.parametrize("agg_type", [Median, TrimmedMean, Krum])
def test_robust_aggregators_refuse_empty_results_and_mismatched_updates(
    agg_type: type[Median] | type[TrimmedMean] | type[Krum],
) -> None:
    # Prepare
    spec = small_spec()
    agg = agg_type(spec)
    bad = random_update(spec, np.random.default_rng(0))
    bad["layer.weight"] = bad["layer.weight"].T

    # Execute / Assert
    with pytest.raises(SpecMismatchError):
        agg.add(bad)
    with pytest.raises(EmptyAggregationError):
        agg.result()
    assert agg.streaming is False


def test_trim_fraction_and_krum_parameters_are_checked() -> None:
    # Prepare
    spec = small_spec()

    # Execute / Assert
    with pytest.raises(ValueError):
        TrimmedMean(spec, 0.5)
    with pytest.raises(ValueError):
        Krum(spec, num_malicious=-1)
    with pytest.raises(ValueError):
        Krum(spec, num_selected=0)


def test_make_aggregator_builds_each_kind_and_refuses_unknown_ones() -> None:
    # Prepare
    spec = small_spec()

    # Execute
    built = {
        kind: make_aggregator(kind, spec, trim_fraction=0.1, num_malicious=1, num_selected=2)
        for kind in AGGREGATOR_KINDS
    }

    # Assert
    assert {k: type(v) for k, v in built.items()} == {
        "fedavg": WeightedMean,
        "fedmedian": Median,
        "fedtrimmedavg": TrimmedMean,
        "krum": Krum,
    }
    assert isinstance(built["fedtrimmedavg"], TrimmedMean) and built["fedtrimmedavg"].trim_fraction == 0.1
    assert isinstance(built["krum"], Krum) and (built["krum"].num_malicious, built["krum"].num_selected) == (
        1,
        2,
    )
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_aggregator("fedprox", spec)
