"""The node trainer: learning, clipping, noise, seeds, the public denominator and the consent filter."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from fl_client.dp_training import DpParams, evaluate, train
from fl_client.tasks import get_task, task_names
from schema.errors import InvalidInputError
from simulations.scenario import SimulationSpec
from tests.fl_client.conftest import firm_records


def _users(records: list[dict[str, Any]]) -> set[str]:
    return {str(r["user_id"]) for r in records}


def _flat(state: dict[str, Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1) for v in state.values()])


def _train(task: str, records: list[dict[str, Any]], **overrides: Any) -> Any:
    spec = get_task(task)
    kwargs: dict[str, Any] = {
        "consented_user_ids": _users(records),
        "noise_multiplier": 0.0,
        "clip_norm": spec.defaults.clip_norm,
        "sample_rate": spec.defaults.sample_rate,
        "steps": 20,
        "lr": spec.defaults.lr,
        "seed": 5,
        "dp": True,
    }
    kwargs.update(overrides)
    if kwargs["dp"] and "expected_batch_size" not in kwargs:
        kwargs["expected_batch_size"] = kwargs["sample_rate"] * max(len(records), 1)
    return train(spec, spec.initial_state(0), records, **kwargs)


@pytest.mark.parametrize("task", task_names())
def test_each_task_learns_on_its_data_without_dp(task: str) -> None:
    # Prepare
    spec = get_task(task)
    records = firm_records(task, n=400)
    start = spec.initial_state(0)
    before = evaluate(spec, start, records, consented_user_ids=None)

    # Execute: the steps of one default run (digits: 20 rounds x 4 steps a round, issue 18's DP defaults).
    rounds = SimulationSpec.model_fields["rounds"].default
    steps = spec.defaults.steps * (rounds if task == "digits" else 1)
    result = _train(task, records, dp=False, steps=steps)
    after = evaluate(spec, result.state, records, consented_user_ids=None)

    # Assert
    assert spec.metric.better(after.value, before.value)
    assert after.loss < 0.7 * before.loss
    assert result.dp_params_used is None
    assert result.num_examples == len(records)
    assert "train_loss" in result.metrics


def test_dp_training_learns_digits_and_reports_what_it_used() -> None:
    # Prepare
    records = firm_records("digits", n=1000)
    before = evaluate("digits", get_task("digits").initial_state(0), records, consented_user_ids=None)

    # Execute
    result = _train(
        "digits",
        records,
        noise_multiplier=1.0,
        clip_norm=1.0,
        sample_rate=0.1,
        steps=300,
        expected_batch_size=100,
    )
    after = evaluate("digits", result.state, records, consented_user_ids=None)

    # Assert
    assert after.value > before.value + 0.5
    assert result.dp_params_used == DpParams(
        noise_multiplier=1.0,
        sample_rate=0.1,
        steps=300,
        clip_norm=1.0,
        unit="record",
        expected_batch_size=100,
    )
    assert result.metrics == {}  # nothing computed from the records leaves a DP node


def test_delta_is_new_state_minus_start() -> None:
    # Prepare
    records = firm_records("digits", n=100)
    start = get_task("digits").initial_state(0)

    # Execute
    result = _train("digits", records)

    # Assert
    for key, value in result.state.items():
        torch.testing.assert_close(value - start[key], result.delta[key])
    assert _flat(result.delta).abs().sum() > 0


def test_update_is_clipped_to_c_per_example_without_noise() -> None:
    # Prepare: q = 1 so every step's batch is all N records; one step with lr = 1.
    records = firm_records("time_estimation", n=50)
    for record in records:
        record["hours"] = 1e6
    clip = 0.01

    # Execute
    clipped = _train("time_estimation", records, sample_rate=1.0, steps=1, lr=1.0, clip_norm=clip)
    raw = _train("time_estimation", records, sample_rate=1.0, steps=1, lr=1.0, dp=False)

    # Assert: the step is -lr * sum / (qN), so the gradient sum is -delta * N.
    n = len(records)
    assert float(_flat(clipped.delta).norm()) * n <= clip * n * (1 + 1e-5)
    assert float(_flat(raw.delta).norm()) * n > clip * n  # without clipping the bound would not hold


def test_dp_ignores_the_seed_two_runs_with_the_same_seed_differ() -> None:
    # Prepare: the global generators in the same state before each run, as a seeded caller would leave them.
    records = firm_records("compliance_checks", n=200)
    runs = []

    # Execute
    for _ in range(2):
        np.random.seed(0)
        torch.manual_seed(0)
        runs.append(_train("compliance_checks", records, noise_multiplier=1.0, seed=11))
    noiseless = _train("compliance_checks", records, noise_multiplier=0.0, seed=11)

    # Assert: a seed the server chose cannot regenerate the noise (nor the sampling).
    assert not torch.equal(_flat(runs[0].state), _flat(runs[1].state))
    assert not torch.allclose(_flat(runs[0].state), _flat(noiseless.state))


class _FixedSources:
    """Deterministic sampling and noise, injected the way an audit breaks the mechanism on purpose."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(123)
        self.noise_calls: list[tuple[tuple[int, ...], float]] = []
        self.uniform_counts: list[int] = []

    def uniform(self, count: int) -> npt.NDArray[np.float64]:
        self.uniform_counts.append(count)
        return self.rng.random(count)

    def noise(self, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float64]:
        self.noise_calls.append((shape, std))
        return self.rng.normal(0.0, std, shape)


def test_under_dp_the_seed_changes_nothing() -> None:
    # Prepare: the same injected sources for both runs; only the seed differs.
    records = firm_records("compliance_checks", n=200)

    # Execute
    one = _train("compliance_checks", records, noise_multiplier=1.0, seed=1, **_sources(_FixedSources()))
    two = _train("compliance_checks", records, noise_multiplier=1.0, seed=2, **_sources(_FixedSources()))

    # Assert
    assert torch.equal(_flat(one.state), _flat(two.state))


def _sources(fixed: _FixedSources) -> dict[str, Any]:
    return {"uniform": fixed.uniform, "noise": fixed.noise}


def test_non_private_runs_are_reproducible_with_their_seed() -> None:
    # Prepare
    records = firm_records("compliance_checks", n=200)

    # Execute
    first = _train("compliance_checks", records, dp=False, seed=11)
    again = _train("compliance_checks", records, dp=False, seed=11)
    other = _train("compliance_checks", records, dp=False, seed=12)

    # Assert
    assert torch.equal(_flat(first.state), _flat(again.state))
    assert not torch.equal(_flat(first.state), _flat(other.state))


def test_noise_is_drawn_once_per_step_at_z_times_c_from_the_injected_source() -> None:
    # Prepare: a constant "noise" far larger than the clipped sum; q = 1, one step, lr = 1.
    records = firm_records("digits", n=20)
    calls: list[tuple[tuple[int, ...], float]] = []
    offset = 0.25

    def constant(shape: tuple[int, ...], std: float) -> npt.NDArray[np.float64]:
        calls.append((shape, std))
        return np.full(shape, offset, dtype=np.float64)

    # Execute
    result = _train(
        "digits",
        records,
        noise_multiplier=3.0,
        clip_norm=1e-9,
        sample_rate=1.0,
        steps=2,
        lr=1.0,
        expected_batch_size=1.0,
        noise=constant,
    )

    # Assert: delta = -2 * (clipped sum + noise) / 1, with the clipped sum below 2 * 20 * 1e-9.
    total = sum(v.numel() for v in result.state.values())
    assert calls == [((total,), 3.0 * 1e-9)] * 2
    torch.testing.assert_close(_flat(result.delta), torch.full((total,), -2 * offset), atol=1e-6, rtol=0)


def test_noise_scale_does_not_depend_on_the_private_record_count() -> None:
    # Prepare: noise std zC = 1 dwarfs the clipped sum (at most n * 1e-6); one step, lr 1, public E = 8.
    small = firm_records("digits", n=10)
    large = firm_records("digits", n=40)
    params = {
        "noise_multiplier": 1e6,
        "clip_norm": 1e-6,
        "sample_rate": 0.5,
        "steps": 1,
        "lr": 1.0,
        "expected_batch_size": 8.0,
    }

    # Execute
    std_small = float(_flat(_train("digits", small, **params).delta).std())
    std_large = float(_flat(_train("digits", large, **params).delta).std())

    # Assert: both are 1/E (2,410 parameters: the sample std is within a few % of the true one).
    assert std_small == pytest.approx(1 / 8, rel=0.1)
    assert std_large == pytest.approx(1 / 8, rel=0.1)
    assert std_small / std_large == pytest.approx(1.0, rel=0.12)


def test_dp_needs_a_public_expected_batch_size() -> None:
    # Prepare
    records = firm_records("digits", n=10)
    spec = get_task("digits")

    # Execute / Assert
    with pytest.raises(InvalidInputError, match="expected_batch_size"):
        train(
            spec,
            None,
            records,
            consented_user_ids=None,
            noise_multiplier=1.0,
            clip_norm=1.0,
            sample_rate=0.1,
            steps=1,
            lr=0.1,
        )


@pytest.mark.parametrize("unit", ["record", "user"])
def test_dp_with_no_records_still_runs_and_releases_noise_only(unit: str) -> None:
    # Prepare: a refusal would tell a node with no records from one with some (an infinite epsilon).
    records = firm_records("digits", n=10)

    # Execute
    result = _train(
        "digits", records, consented_user_ids=set(), noise_multiplier=1.0, expected_batch_size=2.0, unit=unit
    )

    # Assert
    assert result.num_examples == 0
    assert _flat(result.delta).abs().sum() > 0
    assert result.dp_params_used is not None


def test_tiny_sample_rate_gives_empty_batches_that_still_add_noise() -> None:
    # Prepare
    records = firm_records("digits", n=20)

    # Execute
    noisy = _train("digits", records, sample_rate=1e-6, steps=5, noise_multiplier=1.0)
    silent = _train("digits", records, sample_rate=1e-6, steps=5, dp=False)

    # Assert
    assert _flat(noisy.delta).abs().sum() > 0
    assert not _flat(silent.delta).any()


def test_records_of_users_outside_the_snapshot_never_reach_the_model() -> None:
    # Prepare: a poisoned record with an absurd label, from a user who did not consent.
    records = firm_records("time_estimation", n=100)
    snapshot = _users(records)
    outsider = str(uuid.uuid4())
    poison = {**records[0], "user_id": outsider, "hours": 1e9}

    # Execute
    with_poison = _train("time_estimation", [*records, poison], consented_user_ids=snapshot, dp=False)
    without = _train("time_estimation", records, consented_user_ids=snapshot, dp=False)
    if_consented = _train(
        "time_estimation", [*records, poison], consented_user_ids=snapshot | {outsider}, dp=False
    )

    # Assert
    assert with_poison.num_examples == without.num_examples == len(records)
    assert torch.equal(_flat(with_poison.state), _flat(without.state))
    assert not torch.allclose(_flat(if_consented.state), _flat(without.state))


def test_evaluation_also_uses_only_consented_records() -> None:
    # Prepare
    records = firm_records("digits", n=50)
    snapshot = set(list(_users(records))[:1])
    kept = [r for r in records if r["user_id"] in snapshot]

    # Execute
    result = evaluate("digits", None, records, consented_user_ids=snapshot)

    # Assert
    assert result.num_examples == len(kept) < len(records)
    assert result.metric == "accuracy" and result.higher_is_better


def test_nothing_to_train_on_is_refused_without_dp() -> None:
    # Prepare
    records = firm_records("digits", n=10)

    # Execute / Assert
    with pytest.raises(InvalidInputError, match="no consented records"):
        _train("digits", records, consented_user_ids=set(), dp=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"steps": -1}, "steps"),
        ({"method": "magic"}, "magic"),
        ({"unit": "tenant"}, "unit"),
        ({"expected_batch_size": 0.0}, "expected_batch_size"),
        ({"unit": "user", "method": "opacus_ghost"}, "per user"),
    ],
)
def test_bad_parameters_are_rejected(override: dict[str, Any], message: str) -> None:
    # Prepare
    records = firm_records("digits", n=10)

    # Execute / Assert
    with pytest.raises(InvalidInputError, match=message):
        _train("digits", records, **override)


def test_weights_of_another_model_type_are_refused() -> None:
    # Prepare
    records = firm_records("digits", n=10)
    foreign = get_task("time_estimation").initial_state(0)

    # Execute / Assert
    with pytest.raises(InvalidInputError, match="do not fit"):
        train(
            "digits",
            foreign,
            records,
            consented_user_ids=None,
            noise_multiplier=1.0,
            clip_norm=1.0,
            sample_rate=0.1,
            steps=1,
            lr=0.1,
            expected_batch_size=1.0,
        )


# --- user level ----------------------------------------------------------------------------------


def _user_records(user: str, hours: list[float], base: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**base, "user_id": user, "hours": h} for h in hours]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hours=st.lists(st.floats(min_value=0.0, max_value=1e9), min_size=1, max_size=50),
    clip=st.floats(min_value=1e-3, max_value=10.0),
)
def test_one_user_moves_the_user_level_sum_by_at_most_c_whatever_their_records(
    hours: list[float], clip: float
) -> None:
    # Prepare: neighbouring data sets that differ by one whole user; q = 1, one step, lr 1, E 1, no noise.
    base = firm_records("time_estimation", n=30)
    extra = _user_records(str(uuid.uuid4()), hours, base[0])
    params = {
        "sample_rate": 1.0,
        "steps": 1,
        "lr": 1.0,
        "clip_norm": clip,
        "expected_batch_size": 1.0,
        "unit": "user",
        "consented_user_ids": None,
    }

    # Execute
    with_user = _train("time_estimation", [*base, *extra], **params)
    without = _train("time_estimation", base, **params)

    # Assert: the difference of the updates is that user's clipped contribution.
    moved = float((_flat(with_user.delta) - _flat(without.delta)).norm())
    assert moved <= clip * (1 + 1e-4) + 1e-6


def test_record_level_bounds_each_record_not_each_user() -> None:
    # Prepare: one user with 50 extreme records; the same neighbouring pair at both units.
    base = firm_records("time_estimation", n=30)
    extra = _user_records(str(uuid.uuid4()), [1e6] * 50, base[0])
    clip = 0.01
    params = {"sample_rate": 1.0, "steps": 1, "lr": 1.0, "clip_norm": clip, "expected_batch_size": 1.0}

    # Execute
    moved = {}
    for unit in ("record", "user"):
        with_user = _train("time_estimation", [*base, *extra], unit=unit, **params)
        without = _train("time_estimation", base, unit=unit, **params)
        moved[unit] = float((_flat(with_user.delta) - _flat(without.delta)).norm())
    one_more = _train("time_estimation", [*base, extra[0]], unit="record", **params)
    record_base = _train("time_estimation", base, unit="record", **params)
    by_record = float((_flat(one_more.delta) - _flat(record_base.delta)).norm())

    # Assert
    assert moved["user"] <= clip * (1 + 1e-4)
    assert moved["record"] > 10 * clip  # record level protects a record, not a user with 50 of them
    assert by_record <= clip * (1 + 1e-4)


def test_user_level_samples_users_not_records() -> None:
    # Prepare
    records = firm_records("time_estimation", n=200, tenant_index=3)
    users = _users(records)
    fixed = _FixedSources()

    # Execute
    result = _train(
        "time_estimation",
        records,
        unit="user",
        sample_rate=0.5,
        steps=4,
        noise_multiplier=1.0,
        expected_batch_size=0.5 * len(users),
        **_sources(fixed),
    )

    # Assert
    assert len(users) > 1
    assert fixed.uniform_counts == [len(users)] * 4
    assert result.dp_params_used is not None and result.dp_params_used.unit == "user"


def test_user_level_dp_learns() -> None:
    # Prepare: digits spread over 60 users.
    records = firm_records("digits", n=1000)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(60)]
    for i, record in enumerate(records):
        record["user_id"] = ids[i % 60]
    before = evaluate("digits", get_task("digits").initial_state(0), records, consented_user_ids=None)

    # Execute
    result = _train(
        "digits",
        records,
        consented_user_ids=set(ids),
        unit="user",
        noise_multiplier=1.0,
        clip_norm=1.0,
        sample_rate=0.5,
        steps=200,
        expected_batch_size=30.0,
    )
    after = evaluate("digits", result.state, records, consented_user_ids=None)

    # Assert
    assert after.value > before.value + 0.4
