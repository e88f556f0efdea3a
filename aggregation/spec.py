"""The model spec: which arrays an update must contain, in which order, with which shape and dtype.

Built once per run from the global model's arrays. Validation, checksums and every aggregator read
the spec's order, so all of them agree on "the same update" regardless of a dict's insertion
order, and structural checks need no data pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregation.errors import InvalidWeightError, RejectReason, SpecMismatchError

Arrays = Mapping[str, npt.NDArray[Any]]
"""An update or a model: parameter name → numpy array."""

_ALLOWED_KINDS = "fiu"  # floating, signed and unsigned integers (e.g. BatchNorm's num_batches_tracked)


def canonical_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    """The dtype with little-endian byte order: '>f4' and '<f4' hold the same values."""
    dt = np.dtype(dtype)
    return dt.newbyteorder("<") if dt.byteorder not in ("|", "<") else dt


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One named parameter array."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Ordered parameter names, shapes and dtypes of a model."""

    entries: tuple[ArraySpec, ...]

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError("model spec has duplicate parameter names")
        for e in self.entries:
            if e.dtype.kind not in _ALLOWED_KINDS:
                raise ValueError(f"parameter {e.name!r} has dtype {e.dtype}; only float and integer arrays")

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> ModelSpec:
        """Spec of reference arrays (the global model), in their iteration order."""
        return cls(
            tuple(
                ArraySpec(name, tuple(int(d) for d in np.shape(a)), canonical_dtype(np.asarray(a).dtype))
                for name, a in arrays.items()
            )
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def num_parameters(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def nbytes(self) -> int:
        """Bytes of one update in the spec's dtypes."""
        return sum(e.size * e.dtype.itemsize for e in self.entries)

    def __iter__(self) -> Iterator[ArraySpec]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form, so round state can persist the spec it validated against."""
        return {
            "arrays": [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype.str} for e in self.entries]
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(
            tuple(
                ArraySpec(str(a["name"]), tuple(int(d) for d in a["shape"]), canonical_dtype(a["dtype"]))
                for a in data["arrays"]
            )
        )

    def zeros(self) -> dict[str, npt.NDArray[np.float64]]:
        """float64 zeros of every array: the accumulators of the streaming aggregators."""
        return {e.name: np.zeros(e.shape, dtype=np.float64) for e in self.entries}

    def mismatch(self, arrays: Arrays, *, check_dtype: bool = True) -> tuple[RejectReason, str] | None:
        """The first structural problem of `arrays` (keys, type, dtype, shape), or None; no data pass.

        Without `check_dtype` any float or integer dtype passes: aggregators accumulate in float64,
        so a float64 delta of a float32 model is fine there.
        """
        expected = set(self.names)
        given = set(arrays.keys())
        missing = [n for n in self.names if n not in given]
        if missing:
            return RejectReason.MISSING_KEYS, f"missing arrays: {_short_list(missing)}"
        extra = sorted(given - expected)
        if extra:
            return RejectReason.EXTRA_KEYS, f"unexpected arrays: {_short_list(extra)}"
        for e in self.entries:
            a = arrays[e.name]
            if not isinstance(a, np.ndarray | np.generic):  # a numpy scalar is a 0-d array
                return RejectReason.INVALID_TYPE, f"{e.name}: {type(a).__name__} is not a numpy array"
            if a.dtype.kind not in _ALLOWED_KINDS or (check_dtype and canonical_dtype(a.dtype) != e.dtype):
                return RejectReason.DTYPE_MISMATCH, f"{e.name}: dtype {a.dtype}, expected {e.dtype}"
            if a.shape != e.shape:
                return RejectReason.SHAPE_MISMATCH, f"{e.name}: shape {a.shape}, expected {e.shape}"
        return None

    def require(self, arrays: Arrays, *, check_dtype: bool = True) -> None:
        """Raise `SpecMismatchError` on a structural problem; guards aggregators against silent broadcasting."""
        problem = self.mismatch(arrays, check_dtype=check_dtype)
        if problem is not None:
            raise SpecMismatchError(*problem)


def weight_problem(weight: float) -> str | None:
    """Why `weight` cannot weight an update (it must be finite and > 0), or None."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        return f"weight {weight!r} is not a number"
    if not math.isfinite(w) or w <= 0:
        return f"weight {w} is not a finite positive number"
    return None


def require_weight(weight: float) -> float:
    """`weight` as a float, or `InvalidWeightError`."""
    problem = weight_problem(weight)
    if problem is not None:
        raise InvalidWeightError(problem)
    return float(weight)


def _short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} (+{len(names) - limit} more)"
