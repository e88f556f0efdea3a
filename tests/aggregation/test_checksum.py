"""Checksums: stable, canonical, and sensitive to any change of values, dtype, shape or name."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aggregation import ModelSpec, is_checksum, update_checksum
from tests.aggregation.helpers import Update, float_width, model_specs, updates


def test_checksum_matches_the_documented_canonical_form() -> None:
    # Prepare: bytes built by hand from the docstring of aggregation.checksum.
    arrays: Update = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7, dtype=np.int64)}
    expected = hashlib.sha256(b"accute-fl/update-sha256/v1\n")
    expected.update(struct.pack("<I", 2))
    expected.update(struct.pack("<I", 1) + b"w" + struct.pack("<I", 3) + b"<f4")
    expected.update(
        struct.pack("<IQQ", 2, 2, 3) + struct.pack("<Q", 24) + struct.pack("<6f", 0, 1, 2, 3, 4, 5)
    )
    expected.update(struct.pack("<I", 1) + b"n" + struct.pack("<I", 3) + b"<i8")
    expected.update(struct.pack("<I", 0) + struct.pack("<Q", 8) + struct.pack("<q", 7))

    # Execute
    digest = update_checksum(arrays)

    # Assert
    assert digest == expected.hexdigest()
    assert is_checksum(digest)


def test_checksum_is_stable_across_processes() -> None:
    # Prepare
    code = (
        "import numpy as np; from aggregation import update_checksum;"
        "print(update_checksum({'a': np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10)}))"
    )
    here = update_checksum({"a": np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10)})

    # Execute
    there = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()

    # Assert
    assert there == here


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_equal_arrays_have_equal_checksums_whatever_their_memory_layout(data: st.DataObject) -> None:
    # Prepare: the same values as a copy, in Fortran order and big-endian.
    spec = data.draw(model_specs())
    update = data.draw(updates(spec))
    relaid = {name: np.array(a, order="F", dtype=a.dtype.newbyteorder(">")) for name, a in update.items()}

    # Execute
    original = update_checksum(update, spec.names)
    copied = update_checksum({k: v.copy() for k, v in update.items()}, spec.names)
    other_layout = update_checksum(relaid, spec.names)

    # Assert
    assert original == copied == other_layout


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_any_single_element_change_changes_the_checksum(data: st.DataObject) -> None:
    # Prepare
    spec = data.draw(model_specs())
    update: Update = data.draw(updates(spec))
    entry = data.draw(st.sampled_from(spec.entries))
    index = data.draw(st.integers(0, entry.size - 1))
    changed = {k: v.copy() for k, v in update.items()}
    flat = changed[entry.name].reshape(-1)
    new_value = data.draw(st.floats(-1e3, 1e3, width=float_width(entry.dtype)))
    assume(flat[index].tobytes() != np.asarray(new_value, dtype=entry.dtype).tobytes())
    flat[index] = new_value

    # Execute / Assert
    assert update_checksum(changed, spec.names) != update_checksum(update, spec.names)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_a_dtype_change_with_equal_values_changes_the_checksum(data: st.DataObject) -> None:
    # Prepare: float32 values cast to float64 are numerically equal, but not the same update.
    spec = data.draw(model_specs())
    update = data.draw(updates(spec))
    entry = data.draw(st.sampled_from(spec.entries))
    other = np.float64 if entry.dtype == np.float32 else np.float32
    changed = dict(update, **{entry.name: update[entry.name].astype(other)})

    # Execute / Assert
    assert update_checksum(changed, spec.names) != update_checksum(update, spec.names)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), suffix=st.text(alphabet="xyz", min_size=1, max_size=3))
def test_a_name_change_changes_the_checksum(data: st.DataObject, suffix: str) -> None:
    # Prepare
    spec = data.draw(model_specs())
    update = data.draw(updates(spec))
    old = data.draw(st.sampled_from(spec.names))
    renamed = {(k + suffix if k == old else k): v for k, v in update.items()}
    assume(len(renamed) == len(update))

    # Execute / Assert
    assert update_checksum(renamed) != update_checksum(update)


def test_a_reshape_with_the_same_bytes_changes_the_checksum() -> None:
    # Prepare
    a = np.arange(6, dtype=np.float32)

    # Execute / Assert
    assert update_checksum({"a": a.reshape(2, 3)}) != update_checksum({"a": a.reshape(3, 2)})


def test_the_spec_order_not_the_dict_order_defines_the_checksum() -> None:
    # Prepare
    a, b = np.ones(2, np.float32), np.zeros(3, np.float32)
    spec = ModelSpec.from_arrays({"a": a, "b": b})

    # Execute
    in_spec_order = update_checksum({"b": b, "a": a}, spec.names)
    in_dict_order = update_checksum({"b": b, "a": a})

    # Assert
    assert in_spec_order == update_checksum({"a": a, "b": b})
    assert in_dict_order != in_spec_order
