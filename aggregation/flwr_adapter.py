"""Conversion between Flower records and the plain numpy mappings this package works on.

The only module of aggregation/ that imports Flower; nothing else imports it, so the package stays
usable (and testable) without Flower's server stack.

Memory note for servers: `RecordDict.array_records` / `.metric_records` build a `_SyncedDict` that
refers to itself (a bound method) and to the whole RecordDict, so each access leaves a reference
cycle that keeps the reply — tens of MB — alive until the cyclic GC runs, which is triggered by
object counts, not bytes. Folding replies one at a time then still grows RSS by several replies.
`update_from_content` reads the records with plain item access and creates no such cycle.
"""

from __future__ import annotations

import math
from io import BytesIO
from typing import Any

import numpy as np
import numpy.lib.format as npy_format
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.common.constant import SType

from aggregation.spec import Arrays, ModelSpec


def array_view(array: Array) -> npt.NDArray[Any]:
    """A read-only numpy view of a NumPy-serialized `Array`'s bytes: no copy, unlike `Array.numpy()`.

    Validation and aggregation only read updates, so they need not pay a model-sized copy per reply.
    Anything that is not a plain .npy v1/v2 payload falls back to `Array.numpy()`.
    """
    if array.stype != SType.NUMPY:
        return array.numpy()
    buf = BytesIO(array.data)
    version = npy_format.read_magic(buf)
    if version == (1, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(buf)
    elif version == (2, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_2_0(buf)
    else:
        return array.numpy()
    count = math.prod(shape)
    offset = buf.tell()
    if dtype.hasobject or len(array.data) - offset != count * dtype.itemsize:
        raise ValueError("array payload is not a plain numeric .npy of the size its header declares")
    flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def arrays_from_record(record: ArrayRecord, *, copy: bool = False) -> dict[str, npt.NDArray[Any]]:
    """name -> numpy array, in the record's order; read-only views unless `copy` (then writable copies)."""
    if copy:
        return {name: array.numpy() for name, array in record.items()}
    return {name: array_view(array) for name, array in record.items()}


def record_from_arrays(arrays: Arrays, spec: ModelSpec | None = None) -> ArrayRecord:
    """An ArrayRecord of `arrays`, in the spec's order when given (the order nodes and checksums use)."""
    names = list(arrays.keys()) if spec is None else list(spec.names)
    return ArrayRecord({name: Array(np.asarray(arrays[name], order="C")) for name in names})


def update_from_content(
    content: RecordDict,
    *,
    arrays_key: str | None = None,
    weight_key: str = "num-examples",
    copy: bool = False,
) -> tuple[dict[str, npt.NDArray[Any]], float | None]:
    """The update arrays and the example count (None if absent) of a reply's content.

    `arrays_key` names the ArrayRecord; by default the content must hold exactly one. The weight
    is read from the first MetricRecord that has `weight_key`. The arrays are read-only views of
    the reply's bytes unless `copy`. Not validated here: pass the arrays and the weight to
    `UpdateValidator.validate`.
    """
    array_records = [(k, v) for k, v in content.items() if isinstance(v, ArrayRecord)]
    if arrays_key is not None:
        record = content[arrays_key]
        if not isinstance(record, ArrayRecord):
            raise ValueError(f"{arrays_key!r} is not an ArrayRecord")
    elif len(array_records) == 1:
        record = array_records[0][1]
    else:
        raise ValueError(f"expected one ArrayRecord in the reply, found {len(array_records)}")
    weight: float | None = None
    for value in content.values():
        if isinstance(value, MetricRecord) and weight_key in value:
            raw = value[weight_key]
            weight = float(raw) if isinstance(raw, int | float) else None
            break
    return arrays_from_record(record, copy=copy), weight
