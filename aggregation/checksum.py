"""SHA-256 of an update over a canonical serialization, identical on the tenant node and the server.

Canonical form, version 1 (all integers little-endian; every variable-length field is length-prefixed,
so no two different updates serialize to the same bytes):

    b"accute-fl/update-sha256/v1\\n"
    u32  number of arrays
    for each array, in the model's parameter order (the spec order = the model's state_dict order):
        u32 len(name) ‖ name as UTF-8
        u32 len(dtype) ‖ dtype as ASCII: numpy's dtype.str in little-endian form ("<f4", "<i8", "|u1")
        u32 ndim ‖ ndim x u64 dimensions
        u64 len(data) ‖ data: the elements in C (row-major) order, little-endian

A node computes `update_checksum(arrays)` over the arrays it sends (in its state_dict order) and
sends the hex digest; the server recomputes it in the spec's order. A '>f4' array and a '<f4' array
with the same values have the same checksum: the serialization is of values, not of memory layout.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from aggregation.spec import Arrays, canonical_dtype

CHECKSUM_HEADER = b"accute-fl/update-sha256/v1\n"


def update_checksum(arrays: Arrays, names: Sequence[str] | None = None) -> str:
    """Hex SHA-256 of `arrays` in canonical form, walking `names` (default: the mapping's order)."""
    order = list(arrays.keys()) if names is None else list(names)
    h = hashlib.sha256(CHECKSUM_HEADER)
    h.update(struct.pack("<I", len(order)))
    for name in order:
        a = np.asarray(arrays[name])
        dt = canonical_dtype(a.dtype)
        data = np.ascontiguousarray(a, dtype=dt).reshape(-1).view(np.uint8)
        encoded_name = name.encode("utf-8")
        encoded_dtype = dt.str.encode("ascii")
        h.update(struct.pack("<I", len(encoded_name)) + encoded_name)
        h.update(struct.pack("<I", len(encoded_dtype)) + encoded_dtype)
        h.update(struct.pack(f"<I{a.ndim}Q", a.ndim, *a.shape))
        h.update(struct.pack("<Q", data.size))
        h.update(data.data)
    return h.hexdigest()


def is_checksum(value: object) -> bool:
    """True for a lowercase 64-hex-digit SHA-256 digest as produced here."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
