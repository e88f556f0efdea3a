"""Clipping to an L2 norm: never above the bound, small updates untouched, direction kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregation import clip_to_norm, global_norm
from tests.aggregation.helpers import Update, model_specs, updates

bounds = st.floats(1e-3, 1e3)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), bound=bounds)
def test_clipping_never_exceeds_the_bound_and_keeps_the_direction(data: st.DataObject, bound: float) -> None:
    # Prepare
    spec = data.draw(model_specs())
    update: Update = data.draw(updates(spec, bound=1e4))

    # Execute
    clipped, factor = clip_to_norm(update, bound)

    # Assert: within the bound by our norm and by numpy's, in the input dtypes, same direction.
    assert global_norm(clipped) <= bound
    flat = np.concatenate([a.astype(np.float64).ravel() for a in clipped.values()])
    assert np.linalg.norm(flat) <= bound * (1 + 1e-12)
    assert 0.0 < factor <= 1.0
    for name, a in update.items():
        assert clipped[name].dtype == a.dtype
        np.testing.assert_allclose(clipped[name], a.astype(np.float64) * factor, rtol=1e-6, atol=1e-6 * bound)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_updates_within_the_bound_are_returned_untouched(data: st.DataObject) -> None:
    # Prepare
    spec = data.draw(model_specs())
    update: Update = data.draw(updates(spec))
    bound = global_norm(update) * data.draw(st.floats(1.0, 10.0)) + 1e-9

    # Execute
    clipped, factor = clip_to_norm(update, bound)

    # Assert
    assert factor == 1.0
    assert all(clipped[k] is update[k] for k in update)


def test_a_large_update_is_clipped_exactly_onto_the_bound() -> None:
    # Prepare: norm 50.
    update = {"a": np.array([30.0, 40.0], np.float32)}

    # Execute
    clipped, factor = clip_to_norm(update, 5.0)

    # Assert
    assert factor == pytest.approx(0.1)
    assert global_norm(clipped) == pytest.approx(5.0, rel=1e-6) and global_norm(clipped) <= 5.0


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan"), float("inf")])
def test_the_bound_must_be_finite_and_positive(bound: float) -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        clip_to_norm({"a": np.ones(2)}, bound)


def test_non_finite_or_integer_arrays_cannot_be_clipped() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="non-finite"):
        clip_to_norm({"a": np.array([np.nan, 1.0])}, 1.0)
    with pytest.raises(TypeError, match="floating"):
        clip_to_norm({"a": np.array([1, 2])}, 1.0)
