"""The model spec: order, shapes and dtypes from reference arrays; persistable."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation import ArraySpec, ModelSpec
from aggregation.spec import canonical_dtype


def test_spec_keeps_order_shapes_and_little_endian_dtypes() -> None:
    # Prepare
    reference = {
        "b": np.zeros((2, 3), np.float32),
        "a": np.zeros(4, ">f8"),
        "steps": np.array(0, np.int64),
    }

    # Execute
    spec = ModelSpec.from_arrays(reference)

    # Assert
    assert spec.names == ("b", "a", "steps")
    assert [e.shape for e in spec] == [(2, 3), (4,), ()]
    assert [e.dtype.str for e in spec] == ["<f4", "<f8", "<i8"]
    assert spec.num_parameters == 11 and spec.nbytes == 6 * 4 + 4 * 8 + 8


def test_spec_survives_a_json_round_trip() -> None:
    # Prepare
    spec = ModelSpec.from_arrays({"w": np.zeros((3, 1), np.float16), "n": np.array(0, np.uint8)})

    # Execute
    restored = ModelSpec.from_json_dict(spec.to_json_dict())

    # Assert
    assert restored == spec


def test_spec_refuses_duplicate_names_and_non_numeric_dtypes() -> None:
    # Prepare
    entry = ArraySpec("w", (1,), canonical_dtype(np.float32))

    # Execute / Assert
    with pytest.raises(ValueError, match="duplicate"):
        ModelSpec((entry, entry))
    with pytest.raises(ValueError, match="only float and integer"):
        ModelSpec.from_arrays({"mask": np.zeros(2, bool)})


def test_a_numpy_scalar_matches_a_zero_dimensional_entry() -> None:
    # Prepare
    spec = ModelSpec.from_arrays({"scale": np.array(1.0, np.float32)})

    # Execute
    problem = spec.mismatch({"scale": np.float32(2.0)})  # type: ignore[dict-item]

    # Assert
    assert problem is None
    assert spec.mismatch({"scale": np.float64(2.0)}) is not None  # type: ignore[dict-item]
