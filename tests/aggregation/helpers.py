"""Hypothesis strategies and builders shared by the aggregation tests."""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aggregation import ModelSpec

Update = dict[str, npt.NDArray[Any]]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
names = st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=8)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5)


@st.composite
def model_specs(draw: st.DrawFn, max_arrays: int = 3) -> ModelSpec:
    """Small float models: 1 to `max_arrays` arrays of float32 or float64."""
    keys = draw(st.lists(names, min_size=1, max_size=max_arrays, unique=True))
    reference = {k: np.zeros(draw(shapes), dtype=draw(st.sampled_from(FLOAT_DTYPES))) for k in keys}
    return ModelSpec.from_arrays(reference)


def float_width(dtype: np.dtype[Any]) -> Literal[16, 32, 64]:
    """Hypothesis' float width for a numpy float dtype."""
    return cast(Literal[16, 32, 64], dtype.itemsize * 8)


def updates(spec: ModelSpec, bound: float = 1e3) -> st.SearchStrategy[Update]:
    """Finite updates matching `spec`, elements in [-bound, bound]."""
    return st.fixed_dictionaries(
        {
            e.name: hnp.arrays(
                e.dtype,
                e.shape,
                elements=st.floats(-bound, bound, allow_nan=False, width=float_width(e.dtype)),
            )
            for e in spec
        }
    )


def random_update(spec: ModelSpec, rng: np.random.Generator, scale: float = 1.0) -> Update:
    """A dense random update matching `spec` (for tests that need no shrinking)."""
    return {e.name: np.asarray(rng.standard_normal(e.shape) * scale, dtype=e.dtype) for e in spec}


def small_spec() -> ModelSpec:
    """A fixed three-array float32 model with a 0-d array among them."""
    return ModelSpec.from_arrays(
        {
            "layer.weight": np.zeros((4, 3), np.float32),
            "layer.bias": np.zeros(3, np.float32),
            "scale": np.zeros((), np.float32),
        }
    )
