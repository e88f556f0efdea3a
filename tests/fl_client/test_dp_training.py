"""The node trainer: learning, clipping, noise, seeds and the consent filter."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import torch
from torch import Tensor

from fl_client.dp_training import DpParams, evaluate, train
from fl_client.tasks import get_task, task_names
from schema.errors import InvalidInputError
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
    return train(spec, spec.initial_state(0), records, **kwargs)


@pytest.mark.parametrize("task", task_names())
def test_each_task_learns_on_its_data_without_dp(task: str) -> None:
    # Prepare
    spec = get_task(task)
    records = firm_records(task, n=400)
    start = spec.initial_state(0)
    before = evaluate(spec, start, records, consented_user_ids=None)

    # Execute
    result = _train(task, records, dp=False, steps=spec.defaults.steps)
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
    result = _train("digits", records, noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1, steps=300)
    after = evaluate("digits", result.state, records, consented_user_ids=None)

    # Assert
    assert after.value > before.value + 0.5
    assert result.dp_params_used == DpParams(noise_multiplier=1.0, sample_rate=0.1, steps=300, clip_norm=1.0)
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


def test_noise_is_random_but_reproducible_with_the_same_seed() -> None:
    # Prepare
    records = firm_records("compliance_checks", n=200)

    # Execute
    first = _train("compliance_checks", records, noise_multiplier=1.0, seed=11)
    again = _train("compliance_checks", records, noise_multiplier=1.0, seed=11)
    other = _train("compliance_checks", records, noise_multiplier=1.0, seed=12)
    unseeded = [_train("compliance_checks", records, noise_multiplier=1.0, seed=None) for _ in range(2)]
    noiseless = _train("compliance_checks", records, noise_multiplier=0.0, seed=11)

    # Assert
    assert torch.equal(_flat(first.state), _flat(again.state))
    assert not torch.equal(_flat(first.state), _flat(other.state))
    assert not torch.equal(_flat(unseeded[0].state), _flat(unseeded[1].state))
    assert not torch.allclose(_flat(first.state), _flat(noiseless.state))


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


def test_nothing_to_train_on_is_refused() -> None:
    # Prepare
    records = firm_records("digits", n=10)

    # Execute / Assert
    with pytest.raises(InvalidInputError, match="no consented records"):
        _train("digits", records, consented_user_ids=set())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"steps": -1}, "steps"),
        ({"method": "magic"}, "magic"),
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
        )
