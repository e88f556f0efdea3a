"""The one-run audit (Steinke, Nasr and Jagielski 2023): its p-value, and our mechanisms against it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from orchestrator.cli.main import main
from privacy import accounting, audit_one_run
from schema.errors import InvalidInputError


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400).flatmap(lambda r: st.tuples(st.just(r), st.integers(0, r))), st.floats(0.0, 8.0))
def test_without_delta_the_p_value_is_the_binomial_tail(rv: tuple[int, int], epsilon: float) -> None:
    r, v = rv
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    expected = float(stats.binom.sf(v - 1, r, p))
    assert audit_one_run.p_value(1000, r, v, epsilon, 0.0) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300).flatmap(lambda r: st.tuples(st.just(r), st.integers(0, r))), st.floats(0.0, 6.0))
def test_p_value_grows_with_epsilon_and_delta(rv: tuple[int, int], epsilon: float) -> None:
    r, v = rv
    base = audit_one_run.p_value(1000, r, v, epsilon, 1e-6)
    assert audit_one_run.p_value(1000, r, v, epsilon + 0.5, 1e-6) >= base - 1e-12
    assert audit_one_run.p_value(1000, r, v, epsilon, 1e-4) >= base - 1e-12
    assert 0.0 <= base <= 1.0


def test_all_guesses_right_without_delta_has_a_closed_form() -> None:
    # Prepare: P[Bin(r, p) >= r] = p^r = alpha  <=>  p = alpha^(1/r), epsilon = ln(p / (1 - p)).
    r, alpha = 100, 0.05
    p = alpha ** (1 / r)

    # Execute
    bound = audit_one_run.epsilon_bound(1000, r, r, 0.0, alpha)

    # Assert
    assert bound == pytest.approx(math.log(p / (1 - p)), rel=1e-6)


def test_chance_guesses_show_nothing() -> None:
    assert audit_one_run.epsilon_bound(1000, 200, 100, 1e-5, 0.05) == 0.0


def test_guesses_on_perfect_scores_reach_the_cap() -> None:
    rng = np.random.default_rng(5)
    coins = rng.random(1000) < 0.5
    bound, guesses, correct, cap = audit_one_run.evaluate_guesses(coins.astype(float), coins, 1e-5, 0.95)
    assert correct == guesses
    assert bound == pytest.approx(cap)


def test_central_dp_passes_a_one_run_audit() -> None:
    result = audit_one_run.one_run_audit("central", noise_multiplier=1.0, canaries=1000)
    assert result.unit == "tenant"
    assert result.epsilon_claimed == pytest.approx(accounting.mechanism_epsilon(1.0, 1.0, 1, 1e-5))
    assert result.passed, result.as_dict()


def test_central_dp_with_reused_noise_fails_a_one_run_audit() -> None:
    result = audit_one_run.one_run_audit("central", noise_multiplier=4.0, canaries=1000, broken="seed-reused")
    assert result.correct == result.guesses  # the reference run cancels the noise exactly
    assert result.epsilon_lower_bound == pytest.approx(result.max_provable_epsilon)
    assert not result.passed


def test_one_run_refuses_what_it_cannot_audit() -> None:
    with pytest.raises(InvalidInputError, match="canaries 5"):
        audit_one_run.one_run_audit("central", canaries=5)
    with pytest.raises(InvalidInputError, match="broken variants"):
        audit_one_run.one_run_audit("central", broken="count-released")
    with pytest.raises(InvalidInputError, match="record level"):
        audit_one_run.one_run_audit("dp-sgd", unit="user")


# DP-SGD: `train` with `expected_batch_size`, `noise` and `unit` (the node-side rework).


def test_dp_sgd_passes_a_one_run_audit() -> None:
    result = audit_one_run.one_run_audit("dp-sgd", noise_multiplier=1.0, canaries=500)
    assert result.unit == "record"
    assert result.passed, result.as_dict()


def test_dp_sgd_with_reused_noise_fails_a_one_run_audit() -> None:
    result = audit_one_run.one_run_audit("dp-sgd", noise_multiplier=4.0, canaries=500, broken="seed-reused")
    assert result.correct == result.guesses
    assert not result.passed


def test_one_run_through_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(["privacy", "audit", "--mechanism", "central", "--one-run", "--canaries", "200", "--json"])

    # Assert
    out = capsys.readouterr().out
    assert code == 0
    record = json.loads(out)
    assert record["method"] == "one-run" and record["canaries"] == 200 and record["trials"] == 1
    assert 0.0 <= record["epsilon_lower_bound"] <= record["epsilon_claimed"]
