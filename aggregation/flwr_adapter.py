"""Conversion between Flower's ArrayRecord and the plain numpy mappings this package works on.

The only module of aggregation/ that imports Flower; nothing else imports it, so the package stays
usable (and testable) without Flower's server stack.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord

from aggregation.spec import Arrays, ModelSpec


def arrays_from_record(record: ArrayRecord) -> dict[str, npt.NDArray[Any]]:
    """name → numpy array, in the record's order (each `Array` is deserialized once)."""
    return {name: array.numpy() for name, array in record.items()}


def record_from_arrays(arrays: Arrays, spec: ModelSpec | None = None) -> ArrayRecord:
    """An ArrayRecord of `arrays`, in the spec's order when given (the order nodes and checksums use)."""
    names = list(arrays.keys()) if spec is None else list(spec.names)
    return ArrayRecord({name: Array(np.asarray(arrays[name], order="C")) for name in names})
