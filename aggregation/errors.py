"""Errors and rejection codes of the aggregation package.

A bad *update* is not an exception: validation returns a `Rejected` value with a `RejectReason`,
so a server can record it and carry on with the round. Exceptions here mean the *caller* broke a
contract (an aggregator fed an unvalidated update, no noise source for central DP, an empty
aggregation); fl_server maps them onto the product's error tree at its edge.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Machine-readable reason an update was rejected; stable strings, safe to store."""

    MISSING_KEYS = "missing_keys"
    EXTRA_KEYS = "extra_keys"
    INVALID_TYPE = "invalid_type"
    DTYPE_MISMATCH = "dtype_mismatch"
    SHAPE_MISMATCH = "shape_mismatch"
    NON_FINITE = "non_finite"
    NORM_EXCEEDED = "norm_exceeded"
    INVALID_WEIGHT = "invalid_weight"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    REPLAY = "replay"


class AggregationError(Exception):
    """Base of every error this package raises on purpose."""


class SpecMismatchError(AggregationError, ValueError):
    """Arrays handed to an aggregator do not match its model spec (validate updates first)."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidWeightError(AggregationError, ValueError):
    """A weight (example count) is not a finite positive number."""


class EmptyAggregationError(AggregationError):
    """`result()` was asked for before any update was added."""


class MissingNoiseSourceError(AggregationError, TypeError):
    """Central DP was configured with noise but without a noise source; we never fall back to np.random."""


class AggregatorFinalizedError(AggregationError):
    """An update was added after a noisy result was released; a second release would spend privacy twice."""
