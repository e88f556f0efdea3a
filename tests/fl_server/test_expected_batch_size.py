"""The public denominator of a node's step: from public quantities only, and large enough to learn."""

from __future__ import annotations

import pytest

from fl_server.config import RunConfig


def _config(**values: object) -> RunConfig:
    return RunConfig.parse({"run_name": "r", "task": "digits", "sample_rate": 0.1} | values)


def test_record_level_assumes_records_per_user_and_user_level_counts_users() -> None:
    # Prepare
    record = _config(unit="record", records_per_user=25)
    user = _config(unit="user")
    # Execute / Assert: 0.1 x 8 users x 25 records
    assert record.expected_batch_size_for(8) == pytest.approx(20.0)
    assert user.expected_batch_size_for(8) == 1.0  # 0.8 expected users, never below one


def test_a_configured_denominator_wins_and_none_is_below_one() -> None:
    assert _config(expected_batch_size=64).expected_batch_size_for(3) == 64
    assert _config(unit="user").expected_batch_size_for(0) == 1.0


def test_the_flower_run_config_spelling_is_accepted() -> None:
    config = RunConfig.parse(
        {"run-name": "r", "task": "digits", "records-per-user": 10, "expected-batch-size": 0}
    )
    assert config.expected_batch_size is None and config.records_per_user == 10
