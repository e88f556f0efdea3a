"""Update validation: one test per rejection reason, plus acceptance and replay bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation import (
    Accepted,
    ModelSpec,
    Rejected,
    RejectReason,
    SeenChecksums,
    SpecMismatchError,
    UpdateValidator,
    update_checksum,
)
from tests.aggregation.helpers import Update, random_update, small_spec


@pytest.fixture
def spec() -> ModelSpec:
    return small_spec()


@pytest.fixture
def update(spec: ModelSpec) -> Update:
    return random_update(spec, np.random.default_rng(1), scale=0.1)


def rejection(verdict: Accepted | Rejected) -> RejectReason:
    assert isinstance(verdict, Rejected), verdict
    assert verdict.message and "\n" not in verdict.message
    return verdict.reason


def test_a_valid_update_is_accepted_with_its_checksum_and_norm(spec: ModelSpec, update: Update) -> None:
    # Prepare
    validator = UpdateValidator(spec, max_norm=10.0)

    # Execute
    verdict = validator.validate(update, claimed_checksum=update_checksum(update, spec.names), weight=12)

    # Assert
    assert isinstance(verdict, Accepted) and verdict.ok
    assert verdict.checksum == update_checksum(update, spec.names)
    expected_norm = np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in update.values()))
    assert verdict.norm == pytest.approx(expected_norm, rel=1e-12)
    assert verdict.checksum in validator.seen


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values_are_rejected(spec: ModelSpec, update: Update, bad: float) -> None:
    # Prepare: no norm bound, so only the finiteness check can reject.
    update["layer.weight"][2, 1] = bad
    validator = UpdateValidator(spec)

    # Execute
    verdict = validator.validate(update)

    # Assert
    assert rejection(verdict) is RejectReason.NON_FINITE
    assert isinstance(verdict, Rejected) and "layer.weight (1)" in verdict.message
    assert len(validator.seen) == 0


def test_a_wrong_shape_is_rejected(spec: ModelSpec, update: Update) -> None:
    # Prepare: (3,) → (1, 3) would broadcast silently in a naive sum.
    update["layer.bias"] = update["layer.bias"].reshape(1, 3)

    # Execute / Assert
    assert rejection(UpdateValidator(spec).validate(update)) is RejectReason.SHAPE_MISMATCH


def test_a_wrong_dtype_is_rejected(spec: ModelSpec, update: Update) -> None:
    # Prepare
    update["layer.weight"] = update["layer.weight"].astype(np.float64)

    # Execute / Assert
    assert rejection(UpdateValidator(spec).validate(update)) is RejectReason.DTYPE_MISMATCH


def test_a_big_endian_array_of_the_right_dtype_is_accepted(spec: ModelSpec, update: Update) -> None:
    # Prepare
    update["layer.weight"] = update["layer.weight"].astype(">f4")

    # Execute / Assert
    assert UpdateValidator(spec).validate(update).ok


def test_a_missing_key_is_rejected(spec: ModelSpec, update: Update) -> None:
    # Prepare
    del update["layer.bias"]

    # Execute
    verdict = UpdateValidator(spec).validate(update)

    # Assert
    assert rejection(verdict) is RejectReason.MISSING_KEYS
    assert isinstance(verdict, Rejected) and "layer.bias" in verdict.message


def test_an_extra_key_is_rejected(spec: ModelSpec, update: Update) -> None:
    # Prepare
    update["backdoor"] = np.zeros(3, np.float32)

    # Execute
    verdict = UpdateValidator(spec).validate(update)

    # Assert
    assert rejection(verdict) is RejectReason.EXTRA_KEYS
    assert isinstance(verdict, Rejected) and "backdoor" in verdict.message


def test_a_value_that_is_not_an_array_is_rejected(spec: ModelSpec, update: Update) -> None:
    # Prepare
    wrong: dict[str, object] = dict(update)
    wrong["layer.bias"] = [0.0, 0.0, 0.0]

    # Execute / Assert
    assert rejection(UpdateValidator(spec).validate(wrong)) is RejectReason.INVALID_TYPE  # type: ignore[arg-type]


def test_a_norm_above_the_bound_is_rejected(spec: ModelSpec, update: Update) -> None:
    # Prepare: norm exactly 5 (3-4-5) against a bound just below.
    zeros = {name: np.zeros_like(a) for name, a in update.items()}
    zeros["layer.bias"][:2] = [3.0, 4.0]
    validator = UpdateValidator(spec, max_norm=4.999)

    # Execute
    verdict = validator.validate(zeros)

    # Assert
    assert rejection(verdict) is RejectReason.NORM_EXCEEDED
    assert UpdateValidator(spec, max_norm=5.0).validate(zeros).ok


def test_the_norm_bound_applies_to_the_delta_when_a_reference_is_given(
    spec: ModelSpec, update: Update
) -> None:
    # Prepare: full weights far from zero, but close to the global model.
    global_weights = {name: a + np.float32(100.0) for name, a in update.items()}
    close = {name: a + np.float32(1e-3) for name, a in global_weights.items()}
    validator = UpdateValidator(spec, max_norm=1.0)

    # Execute
    against_zero = validator.validate(close, record=False)
    against_global = validator.validate(close, reference=global_weights)

    # Assert
    assert rejection(against_zero) is RejectReason.NORM_EXCEEDED
    assert isinstance(against_global, Accepted)
    assert against_global.norm < 1.0


def test_a_replayed_update_is_rejected(spec: ModelSpec, update: Update) -> None:
    # Prepare
    validator = UpdateValidator(spec)
    first = validator.validate(update)

    # Execute
    second = validator.validate({k: v.copy() for k, v in update.items()})

    # Assert
    assert first.ok
    assert rejection(second) is RejectReason.REPLAY


def test_a_replay_is_detected_after_persisting_and_restoring_the_seen_set(
    spec: ModelSpec, update: Update
) -> None:
    # Prepare: round 1 accepts and the server persists; a restarted server restores.
    first = UpdateValidator(spec)
    assert first.validate(update).ok
    saved = first.seen.to_json()

    # Execute
    restarted = UpdateValidator(spec, seen=SeenChecksums.from_json(saved))
    verdict = restarted.validate(update)

    # Assert
    assert rejection(verdict) is RejectReason.REPLAY


def test_validate_without_record_leaves_the_seen_set_alone(spec: ModelSpec, update: Update) -> None:
    # Prepare
    validator = UpdateValidator(spec)

    # Execute
    verdicts = [validator.validate(update, record=False) for _ in range(2)]

    # Assert
    assert all(v.ok for v in verdicts)
    assert len(validator.seen) == 0


def test_a_claimed_checksum_that_does_not_match_is_rejected(spec: ModelSpec, update: Update) -> None:
    # Prepare: the node hashed one thing and sent another.
    claimed = update_checksum(update, spec.names)
    update["scale"] = np.asarray(update["scale"] + np.float32(1.0))

    # Execute / Assert
    assert (
        rejection(UpdateValidator(spec).validate(update, claimed_checksum=claimed))
        is RejectReason.CHECKSUM_MISMATCH
    )


@pytest.mark.parametrize("weight", [0, -3, float("nan"), float("inf"), 10_001])
def test_an_invalid_or_too_large_weight_is_rejected(spec: ModelSpec, update: Update, weight: float) -> None:
    # Prepare
    validator = UpdateValidator(spec, max_weight=10_000)

    # Execute / Assert
    assert rejection(validator.validate(update, weight=weight)) is RejectReason.INVALID_WEIGHT


def test_a_reference_that_does_not_match_the_spec_is_a_caller_error(spec: ModelSpec, update: Update) -> None:
    # Prepare
    reference = dict(update)
    del reference["scale"]

    # Execute / Assert
    with pytest.raises(SpecMismatchError):
        UpdateValidator(spec).validate(update, reference=reference)


def test_seen_checksums_round_trip_and_refuse_non_digests() -> None:
    # Prepare
    digests = [update_checksum({"a": np.full(1, i, np.float32)}) for i in range(3)]
    seen = SeenChecksums(digests)

    # Execute
    restored = SeenChecksums.from_json(seen.to_json())

    # Assert
    assert list(restored) == digests
    with pytest.raises(ValueError):
        seen.add("not-a-digest")
    seen.discard(digests[0])
    assert digests[0] not in seen and len(seen) == 2
