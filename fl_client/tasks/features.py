"""Record → tensor encoders shared by every task.

Every transform is fixed in code (categories, scales, hash buckets), never fitted on data: tenants
encode independently, and a transform fitted on one tenant's data would both disagree across
tenants and leak that tenant's statistics outside the DP guarantee.

Values may arrive as strings (CSV) or as typed values (SQL, Parquet, the synthetic generator);
each field coerces what it reads, so the data source does not need to know the task.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from schema.errors import InvalidInputError

_TOKEN = re.compile(r"[a-z0-9]+")
_TRUE = frozenset({"1", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "false", "f", "no", "n", ""})


def _value(record: Mapping[str, Any], column: str) -> Any:
    try:
        value = record[column]
    except KeyError:
        raise InvalidInputError(f"record has no column {column!r}; it has {sorted(record)}") from None
    if value is None:
        raise InvalidInputError(f"column {column!r} is empty in a record")
    return value


def to_float(value: Any, column: str) -> float:
    """A finite float from a number or its text (CSV)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"column {column!r}: {value!r} is not finite")
    return number


def to_bool(value: Any, column: str) -> bool:
    """A bool from a bool, a 0/1 number or its text ("true", "1", "yes")."""
    if isinstance(value, bool | int | float):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInputError(f"column {column!r}: {value!r} is not a boolean")


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens; punctuation and case carry no document-type signal here."""
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=65536)
def token_bucket(token: str, dim: int) -> int:
    """The hash bucket of `token`: BLAKE2b, so every process and machine agrees (Python's `hash()` is salted)."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % dim


def hashed_bow(text: str, dim: int) -> np.ndarray:
    """L2-normalised hashed bag of words: a fixed-size vector with no vocabulary to share or fit."""
    row = np.zeros(dim, dtype=np.float32)
    for token in tokenize(text):
        row[token_bucket(token, dim)] += 1.0
    norm = float(np.linalg.norm(row))
    if norm > 0.0:
        row /= norm
    return row


class Field(Protocol):
    """One block of the feature vector, read from one record."""

    @property
    def columns(self) -> tuple[str, ...]: ...

    @property
    def dim(self) -> int: ...

    def encode_record(self, record: Mapping[str, Any]) -> Sequence[float] | np.ndarray: ...


class _SingleColumn:
    """A field that reads one column: `encode(value)` is all a subclass writes."""

    column: str

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def encode(self, value: Any) -> Sequence[float] | np.ndarray:
        raise NotImplementedError

    def encode_record(self, record: Mapping[str, Any]) -> Sequence[float] | np.ndarray:
        return self.encode(_value(record, self.column))


@dataclass(frozen=True)
class OneHot(_SingleColumn):
    """A categorical column; an unknown category encodes as all zeros rather than failing a round."""

    column: str
    categories: tuple[str, ...]

    @property
    def dim(self) -> int:
        return len(self.categories)

    def encode(self, value: Any) -> list[float]:
        row = [0.0] * len(self.categories)
        text = str(value)
        if text in self.categories:
            row[self.categories.index(text)] = 1.0
        return row


@dataclass(frozen=True)
class Numeric(_SingleColumn):
    """A numeric column through a fixed transform (e.g. log1p then scale) into roughly [-1, 1]."""

    column: str
    transform: Callable[[float], float]

    @property
    def dim(self) -> int:
        return 1

    def encode(self, value: Any) -> list[float]:
        return [self.transform(to_float(value, self.column))]


@dataclass(frozen=True)
class Flag(_SingleColumn):
    """A boolean column as 0/1."""

    column: str

    @property
    def dim(self) -> int:
        return 1

    def encode(self, value: Any) -> list[float]:
        return [1.0 if to_bool(value, self.column) else 0.0]


@dataclass(frozen=True)
class Cyclic(_SingleColumn):
    """A periodic integer column (month, weekday) as (sin, cos), so December sits next to January."""

    column: str
    period: int

    @property
    def dim(self) -> int:
        return 2

    def encode(self, value: Any) -> list[float]:
        angle = 2.0 * math.pi * to_float(value, self.column) / self.period
        return [math.sin(angle), math.cos(angle)]


@dataclass(frozen=True)
class HashedText(_SingleColumn):
    """A free-text column as a hashed bag of words of `dim` buckets."""

    column: str
    dim: int

    def encode(self, value: Any) -> np.ndarray:
        return hashed_bow(str(value), self.dim)


@dataclass(frozen=True)
class ClassLabel:
    """A class-name target → class index; an unknown class is an error (it cannot be learned)."""

    column: str
    classes: tuple[str, ...]

    def encode(self, values: list[Any]) -> Tensor:
        index = {name: i for i, name in enumerate(self.classes)}
        try:
            return torch.tensor([index[str(v)] for v in values], dtype=torch.long)
        except KeyError as exc:
            raise InvalidInputError(
                f"column {self.column!r}: unknown class {exc.args[0]!r}; known: {', '.join(self.classes)}"
            ) from None


@dataclass(frozen=True)
class RegressionTarget:
    """A numeric target through a fixed transform (log1p for durations), so the loss is O(1) and tails are tame."""

    column: str
    transform: Callable[[float], float]

    def encode(self, values: list[Any]) -> Tensor:
        return torch.tensor([self.transform(to_float(v, self.column)) for v in values], dtype=torch.float32)


@dataclass(frozen=True)
class NumericBlock:
    """Many numeric columns with one scale (pixel intensities): one field instead of 64."""

    columns: tuple[str, ...]
    scale: float

    @property
    def dim(self) -> int:
        return len(self.columns)

    def encode_record(self, record: Mapping[str, Any]) -> list[float]:
        return [to_float(_value(record, c), c) / self.scale for c in self.columns]


Label = ClassLabel | RegressionTarget


@dataclass(frozen=True)
class RecordEncoder:
    """Feature fields plus a label: records in, (features float32 (N, dim), targets) out."""

    fields: tuple[Field, ...]
    label: Label

    @property
    def dim(self) -> int:
        return sum(f.dim for f in self.fields)

    @property
    def columns(self) -> tuple[str, ...]:
        names = [c for f in self.fields for c in f.columns]
        return (*dict.fromkeys(names), self.label.column)

    def features(self, records: Sequence[Mapping[str, Any]]) -> Tensor:
        """Only the features (for inference, where there is no label)."""
        out = np.zeros((len(records), self.dim), dtype=np.float32)
        for i, record in enumerate(records):
            start = 0
            for f in self.fields:
                out[i, start : start + f.dim] = f.encode_record(record)
                start += f.dim
        return torch.from_numpy(out)

    def encode(self, records: Sequence[Mapping[str, Any]]) -> tuple[Tensor, Tensor]:
        targets = self.label.encode([_value(r, self.label.column) for r in records])
        return self.features(records), targets
