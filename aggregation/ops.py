"""Array arithmetic shared by validation, aggregation and clipping.

Everything accumulates in float64 and walks large arrays in fixed-size chunks, so a float32 model
of N parameters never needs an N-element float64 temporary on top of the accumulators: the extra
memory is one chunk, whatever the model size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregation.spec import Arrays, ModelSpec

CHUNK = 1 << 16
"""Elements per chunk: 512 KiB of float64, small enough to stay in cache."""

Float64Arrays = dict[str, npt.NDArray[np.float64]]


def _flat(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """1-D view (a copy only for non-contiguous input)."""
    return a.reshape(-1)


def _spans(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def sum_of_squares(arrays: Arrays, reference: Arrays | None = None) -> float:
    """Σ (a - reference)² over every element of every array, in float64.

    Non-finite input gives a non-finite result, which is how validation detects NaN/Inf in the
    same pass that measures the norm.
    """
    total = 0.0
    for name, a in arrays.items():
        x = _flat(a)
        r = None if reference is None else _flat(reference[name])
        for s in _spans(x.size):
            c = x[s].astype(np.float64)
            if r is not None:
                c -= r[s]
            total += float(np.dot(c, c))
    return total


def global_norm(arrays: Arrays, reference: Arrays | None = None) -> float:
    """L2 norm over all arrays taken as one vector (of `arrays - reference` when given)."""
    return math.sqrt(sum_of_squares(arrays, reference))


def non_finite_counts(arrays: Arrays) -> dict[str, int]:
    """Number of NaN/Inf elements per array that has any; a second pass, run only when needed."""
    counts: dict[str, int] = {}
    for name, a in arrays.items():
        if a.dtype.kind != "f":
            continue
        n = int(a.size - np.count_nonzero(np.isfinite(a)))
        if n:
            counts[name] = n
    return counts


def accumulate(acc: npt.NDArray[np.float64], x: npt.NDArray[Any], scale: float = 1.0) -> None:
    """acc += scale · x, in float64, without an x-sized temporary."""
    a = acc.reshape(-1)
    xs = _flat(x)
    buf = np.empty(min(CHUNK, xs.size), dtype=np.float64)
    for s in _spans(xs.size):
        if scale == 1.0:
            np.add(a[s], xs[s], out=a[s])
        else:
            chunk = buf[: s.stop - s.start]
            np.multiply(xs[s], scale, out=chunk, dtype=np.float64)
            np.add(a[s], chunk, out=a[s])


def cast_like_spec(arrays: Arrays, spec: ModelSpec, scale: float = 1.0) -> dict[str, npt.NDArray[Any]]:
    """float64 arrays (times `scale`) in the spec's dtypes; integers are rounded, not truncated.

    Chunked, so the only model-sized allocation is the output itself.
    """
    out: dict[str, npt.NDArray[Any]] = {}
    for e in spec:
        src = _flat(np.asarray(arrays[e.name]))
        flat = np.empty(e.size, dtype=e.dtype)
        for s in _spans(e.size):
            v = src[s] * scale if scale != 1.0 else src[s]
            flat[s] = np.rint(v) if e.dtype.kind in "iu" else v
        out[e.name] = flat.reshape(e.shape)
    return out


def delta(update: Arrays, reference: Arrays, spec: ModelSpec) -> Float64Arrays:
    """update - reference in float64 (exact for float32 inputs), for clipping and delta aggregation."""
    # np.asarray: ufuncs return numpy scalars for 0-d arrays, which are not ndarrays.
    return {
        e.name: np.asarray(np.subtract(update[e.name], reference[e.name], dtype=np.float64)) for e in spec
    }


def apply_delta(reference: Arrays, delta_arrays: Arrays, spec: ModelSpec) -> dict[str, npt.NDArray[Any]]:
    """reference + delta, in the spec's dtypes: the new global model after delta aggregation."""
    summed = {e.name: np.add(reference[e.name], delta_arrays[e.name], dtype=np.float64) for e in spec}
    return cast_like_spec(summed, spec)


def clip_to_norm(arrays: Arrays, max_norm: float) -> tuple[dict[str, npt.NDArray[Any]], float]:
    """Scale `arrays` so that their global L2 norm is at most `max_norm`.

    Returns the (possibly new) arrays and the factor applied (1.0 when already within the bound;
    the input arrays are then returned as they are, not copied). Dtypes are preserved; because
    scaling rounds, the factor is nudged down until the *computed* norm is ≤ max_norm, so the
    sensitivity bound that central DP relies on holds exactly, not just up to rounding.
    """
    if not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"max_norm must be a finite positive number, got {max_norm}")
    for name, a in arrays.items():
        if a.dtype.kind != "f":
            raise TypeError(f"{name}: clipping needs floating arrays, got {a.dtype}")
    norm = global_norm(arrays)
    if not math.isfinite(norm):
        raise ValueError("cannot clip arrays with non-finite values")
    if norm <= max_norm:
        return dict(arrays), 1.0
    # One rounding step of the coarsest dtype: shrinking by it undoes any upward rounding at once.
    eps = max(float(np.finfo(a.dtype).eps) for a in arrays.values())
    factor = max_norm / norm
    while True:
        clipped = {name: np.asarray(a * factor, dtype=a.dtype) for name, a in arrays.items()}
        got = global_norm(clipped)
        if got <= max_norm:
            return clipped, factor
        factor *= (max_norm / got) * (1.0 - eps)
