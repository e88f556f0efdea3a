"""The DP-aware update-norm bound (``fl_server.norm_bound``): properties and an empirical check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_server.norm_bound import binomial_upper, dp_update_bound, gaussian_norm_tail

BASE = {
    "noise_multiplier": 1.1,
    "clip_norm": 1.0,
    "steps": 10,
    "lr": 0.5,
    "sample_rate": 0.1,
    "expected_batch_size": 4.0,
    "max_units": 40.0,
    "dimension": 2410,
}

positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
factor = st.floats(min_value=1.01, max_value=100.0)


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["noise_multiplier", "clip_norm", "lr", "max_units", "steps", "dimension"]),
    value=positive,
    grow=factor,
)
def test_the_bound_grows_with_every_parameter_but_the_batch_size(key: str, value: float, grow: float) -> None:
    # Prepare: one parameter at a value, then larger.
    cast = int if key in ("steps", "dimension") else float
    low = cast(max(value, 1)) if cast is int else value
    high = cast(math.ceil(low * grow)) if cast is int else low * grow

    # Execute
    before = dp_update_bound(**(BASE | {key: low}))
    after = dp_update_bound(**(BASE | {key: high}))

    # Assert: never smaller (strictly larger for the linear factors).
    assert after >= before
    if key in ("clip_norm", "lr"):
        assert after == pytest.approx(before * grow)


@settings(max_examples=200, deadline=None)
@given(batch=positive, grow=factor)
def test_the_bound_shrinks_as_the_public_batch_grows(batch: float, grow: float) -> None:
    # Execute: the same node's units, a larger denominator.
    small = dp_update_bound(**(BASE | {"expected_batch_size": batch}))
    large = dp_update_bound(**(BASE | {"expected_batch_size": batch * grow}))

    # Assert: the noise is divided by the batch: a smaller batch gets a larger bound, in proportion.
    assert large < small
    assert small / large == pytest.approx(grow)


@settings(max_examples=100, deadline=None)
@given(momentum=st.floats(min_value=0.0, max_value=0.99), failure=st.floats(min_value=1e-12, max_value=0.5))
def test_momentum_scales_by_one_over_one_minus_beta_and_a_smaller_failure_costs_more(
    momentum: float, failure: float
) -> None:
    plain = dp_update_bound(**BASE, failure=failure)
    assert dp_update_bound(**BASE, failure=failure, momentum=momentum) == pytest.approx(
        plain / (1 - momentum)
    )
    assert dp_update_bound(**BASE, failure=failure / 10) > plain


def test_no_noise_no_steps_and_bad_parameters() -> None:
    # Without noise only the clipped term is left: at most lr x T x C x units / B when q = 1.
    clipped = dp_update_bound(**(BASE | {"noise_multiplier": 0.0, "sample_rate": 1.0}))
    assert clipped == pytest.approx(1.001 * 0.5 * 10 * 40 / 4.0)
    assert dp_update_bound(**(BASE | {"steps": 0})) == 0.0
    for bad in (
        {"expected_batch_size": 0.0},
        {"lr": -1.0},
        {"noise_multiplier": math.nan},
        {"momentum": 1.0},
    ):
        with pytest.raises(ValueError):
            dp_update_bound(**(BASE | bad))
    with pytest.raises(ValueError):
        binomial_upper(10, 0.5, failure=1.0)


def test_the_tail_bounds_hold_empirically() -> None:
    # Prepare: 20,000 draws of each quantity (numpy's seeded generator: a statistics check).
    rng = np.random.default_rng(7)
    failure = 0.01

    # Execute
    norms = np.linalg.norm(rng.standard_normal((20_000, 50)), axis=1)
    counts = rng.binomial(200, 0.1, size=20_000)

    # Assert: each bound is exceeded at most at its rate (with room for sampling error).
    assert np.mean(norms >= gaussian_norm_tail(50, failure)) <= failure
    assert np.mean(counts >= binomial_upper(200, 0.1, failure)) <= failure
    assert binomial_upper(3, 0.9, 1e-9) == 3.0  # never above the number of trials


def test_an_honest_worst_case_node_stays_under_its_bound() -> None:
    # Prepare: the node of the derivation at its worst: every sampled unit's clipped gradient
    # points the same way (norm exactly C), plus the Gaussian noise, T plain SGD steps.
    rng = np.random.default_rng(11)
    params = {
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "steps": 10,
        "lr": 0.5,
        "sample_rate": 0.1,
        "expected_batch_size": 2.0,
        "max_units": 20.0,
        "dimension": 200,
    }
    direction = np.zeros(params["dimension"])
    direction[0] = 1.0

    # Execute: 2,000 honest updates.
    norms = []
    for _ in range(2_000):
        update = np.zeros(params["dimension"])
        for _ in range(params["steps"]):
            sampled = rng.binomial(int(params["max_units"]), params["sample_rate"])
            noise = rng.normal(0.0, params["noise_multiplier"] * params["clip_norm"], params["dimension"])
            update -= params["lr"] / params["expected_batch_size"] * (sampled * direction + noise)
        norms.append(float(np.linalg.norm(update)))

    # Assert: none exceeds the bound at failure 1e-3; a x50 boost of any of them does.
    bound = dp_update_bound(**params, failure=1e-3)  # type: ignore[arg-type]
    assert max(norms) <= bound
    assert 50 * min(norms) > 4 * bound
