"""Update validation: one verdict per reply, never an exception for a bad update.

Checks run cheapest first — keys, types, dtypes, shapes (no data pass), then one float64 pass that
measures the L2 norm and detects NaN/Inf together, then the SHA-256 (a claimed checksum must match;
a checksum seen before is a replay). An accepted update's checksum is recorded in `SeenChecksums`
so that the same bytes cannot count twice, in this round or a later one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, MutableSet
from dataclasses import dataclass

from aggregation.checksum import is_checksum, update_checksum
from aggregation.errors import RejectReason
from aggregation.ops import global_norm, non_finite_counts
from aggregation.spec import Arrays, ModelSpec, weight_problem


@dataclass(frozen=True, slots=True)
class Accepted:
    """The update passed every check."""

    checksum: str
    norm: float
    """L2 norm of the update (of update - reference when a reference was given)."""

    ok = True


@dataclass(frozen=True, slots=True)
class Rejected:
    """The update failed a check; `reason` is for machines, `message` (one line) for people."""

    reason: RejectReason
    message: str
    #: How far over its bound the update was: norm / bound (``norm_exceeded``) or weight / maximum
    #: (``invalid_weight`` above the maximum); None for the other reasons.
    excess: float | None = None

    ok = False


Verdict = Accepted | Rejected


class SeenChecksums(MutableSet[str]):
    """Checksums of updates already accepted; persist with `to_json` and restore with `from_json`.

    Insertion-ordered, so a server that wants to bound it can drop the oldest entries.
    """

    def __init__(self, checksums: Iterable[str] = ()) -> None:
        self._items: dict[str, None] = {}
        for c in checksums:
            self.add(c)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, value: str) -> None:
        if not is_checksum(value):
            raise ValueError(f"not a SHA-256 hex digest: {value!r}")
        self._items[value] = None

    def discard(self, value: str) -> None:
        self._items.pop(value, None)

    def to_json(self) -> str:
        return json.dumps(list(self._items))

    @classmethod
    def from_json(cls, text: str) -> SeenChecksums:
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("expected a JSON list of checksums")
        return cls(data)

    def __repr__(self) -> str:
        return f"SeenChecksums({len(self)} checksums)"


class UpdateValidator:
    """Validates replies against a model spec; configure once per run, call `validate` per reply.

    `max_norm` bounds the global L2 norm of the update, or of update - reference when `validate`
    is given the round's global weights (the meaningful bound when nodes send full weights).
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        max_norm: float | None = None,
        seen: SeenChecksums | None = None,
        max_weight: float | None = None,
    ) -> None:
        if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a finite positive number, got {max_norm}")
        self.spec = spec
        self.max_norm = max_norm
        self.seen = SeenChecksums() if seen is None else seen
        self.max_weight = max_weight

    def validate(
        self,
        update: Arrays,
        *,
        reference: Arrays | None = None,
        claimed_checksum: str | None = None,
        weight: float | None = None,
        record: bool = True,
        max_weight: float | None = None,
    ) -> Verdict:
        """Check `update`; with `record`, an accepted checksum is added to `seen` (validate, then change state).

        ``max_weight`` overrides the validator's bound for this update (the server's own bound on
        what this sender can truthfully claim).
        """
        weight_cap = self.max_weight if max_weight is None else max_weight
        if reference is not None:
            self.spec.require(reference)
        problem = self.spec.mismatch(update)
        if problem is not None:
            return Rejected(*problem)
        if weight is not None:
            why = weight_problem(weight)
            if why is None and weight_cap is not None and float(weight) > weight_cap:
                return Rejected(
                    RejectReason.INVALID_WEIGHT,
                    f"weight {weight} exceeds the maximum {weight_cap:g}",
                    float(weight) / weight_cap if weight_cap > 0 else math.inf,
                )
            if why is not None:
                return Rejected(RejectReason.INVALID_WEIGHT, why)

        ordered = {name: update[name] for name in self.spec.names}
        norm = global_norm(ordered, reference)
        if not math.isfinite(norm):
            counts = non_finite_counts(ordered)
            if counts:
                detail = ", ".join(f"{name} ({n})" for name, n in counts.items())
                return Rejected(RejectReason.NON_FINITE, f"NaN or Inf values in {detail}")
        if self.max_norm is not None and not norm <= self.max_norm:
            what = "update - global" if reference is not None else "update"
            return Rejected(
                RejectReason.NORM_EXCEEDED,
                f"L2 norm of {what} is {norm:.6g}, above the bound {self.max_norm:.6g}",
                norm / self.max_norm if math.isfinite(norm) else math.inf,
            )

        checksum = update_checksum(ordered, self.spec.names)
        if claimed_checksum is not None and str(claimed_checksum).lower() != checksum:
            return Rejected(
                RejectReason.CHECKSUM_MISMATCH,
                f"claimed checksum {str(claimed_checksum)[:16]}… does not match the received arrays ({checksum[:16]}…)",
            )
        if checksum in self.seen:
            return Rejected(RejectReason.REPLAY, f"update {checksum[:16]}… was already received")
        if record:
            self.seen.add(checksum)
        return Accepted(checksum=checksum, norm=norm)
