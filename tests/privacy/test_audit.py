"""The empirical privacy audit: its statistics, our mechanisms (must pass) and broken ones (must be flagged).

The DP-SGD audits run the real `fl_client.dp_training.train` with a public expected batch size and
injectable noise/sampling sources; the central audits run the real `aggregation.CentralDPSum`. Every
mechanism draws its noise from the OS CSPRNG, so these tests cannot be seeded: the trial counts are
sized so that a miss (a broken variant not flagged) or a false alarm is far below one in a thousand
(simulated on Gaussian scores before choosing them).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from orchestrator.cli.main import main
from privacy import accounting, audit
from schema.errors import InvalidInputError

# --- Clopper-Pearson and the bound ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "lower", "upper"),
    [
        (0, 10, 0.0, 0.30850),  # 1 - 0.025^(1/10)
        (10, 10, 0.69150, 1.0),  # 0.025^(1/10)
        (5, 10, 0.18709, 0.81291),  # the textbook interval for 5 of 10
        (1, 20, 0.00127, 0.24873),
        (50, 100, 0.39832, 0.60168),
    ],
)
def test_clopper_pearson_matches_known_intervals(k: int, n: int, lower: float, upper: float) -> None:
    # Execute
    lo, hi = audit.clopper_pearson(k, n)

    # Assert
    assert float(lo) == pytest.approx(lower, abs=1e-5)
    assert float(hi) == pytest.approx(upper, abs=1e-5)


def test_clopper_pearson_edges_have_closed_forms() -> None:
    # Prepare: with 0 (or n) successes the exact interval is 1 - (alpha/2)^(1/n) (or (alpha/2)^(1/n)).
    n = 37

    # Execute
    _, hi0 = audit.clopper_pearson(0, n, 0.9)
    lo_n, _ = audit.clopper_pearson(n, n, 0.9)

    # Assert
    assert float(hi0) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-12)
    assert float(lo_n) == pytest.approx(0.05 ** (1 / n), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=100_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))
)
def test_clopper_pearson_contains_the_estimate(kn: tuple[int, int]) -> None:
    k, n = kn
    lo, hi = audit.clopper_pearson(k, n)
    assert 0.0 <= float(lo) <= k / n <= float(hi) <= 1.0
    assert float(lo) < float(hi)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 5000).flatmap(
        lambda n: st.tuples(
            st.integers(0, n), st.integers(0, n), st.just(n), st.sampled_from([1e-5, 1e-2, 0.1])
        )
    )
)
def test_bound_is_between_zero_and_what_the_trials_can_show(case: tuple[int, int, int, float]) -> None:
    tp, fp, n, delta = case
    bound = float(audit.epsilon_lower_bound(tp, n, fp, n, delta))
    assert 0.0 <= bound <= audit.max_provable_epsilon(n, n, delta) + 1e-12
    # More true positives never lower the bound; more false positives never raise it.
    assert float(audit.epsilon_lower_bound(min(tp + 1, n), n, fp, n, delta)) >= bound - 1e-12
    assert float(audit.epsilon_lower_bound(tp, n, min(fp + 1, n), n, delta)) <= bound + 1e-12


def test_max_provable_epsilon_is_the_perfect_tests_bound() -> None:
    # Prepare: TPR = 1 and FPR = 0 observed on n per side: TPR_lo = 0.025^(1/n), FPR_hi = 1 - 0.025^(1/n).
    n, delta = 500, 1e-5
    edge = 0.025 ** (1 / n)

    # Execute
    cap = audit.max_provable_epsilon(n, n, delta)

    # Assert
    assert cap == pytest.approx(math.log((edge - delta) / (1 - edge)), rel=1e-9)


def test_bound_never_exceeds_the_true_epsilon_of_a_gaussian_mechanism() -> None:
    # Prepare: scores of the Gaussian mechanism with sensitivity 1 and sigma = 1 (μ = 1 GDP), whose exact
    # ε at δ solves δ = Φ(-ε + ½) - e^ε Φ(-ε - ½) (Dong, Roth and Su 2019).
    delta = 0.1

    def exact_delta(eps: float) -> float:
        return float(stats.norm.cdf(-eps + 0.5) - math.exp(eps) * stats.norm.cdf(-eps - 0.5))

    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if exact_delta(mid) <= delta else (mid, hi)
    true_epsilon = hi
    rng = np.random.default_rng(7)

    # Execute: 40 audits of 4,000 trials each
    bounds = [
        audit.evaluate_scores(rng.normal(1.0, 1.0, 2000), rng.normal(0.0, 1.0, 2000), delta).bound
        for _ in range(40)
    ]

    # Assert: at 95 % confidence at most a few may exceed; here none comes close, and most show something.
    assert sum(b > true_epsilon for b in bounds) <= 4
    assert np.median(bounds) > 0.3


def test_threshold_sits_between_separated_groups() -> None:
    threshold, bound = audit.choose_threshold([10.0, 11.0, 12.0] * 30, [1.0, 2.0, 3.0] * 30, 1e-5)
    assert 3.0 < threshold < 10.0
    assert bound == pytest.approx(audit.max_provable_epsilon(90, 90, 1e-5))


def test_the_attacker_picks_the_statistic_that_separates() -> None:
    # Prepare: column 0 is noise on both sides; column 1 separates with (and only with) the canary.
    rng = np.random.default_rng(3)
    with_canary = np.column_stack([rng.normal(size=400), rng.normal(5.0, 1.0, 400)])
    without_canary = np.column_stack([rng.normal(size=400), rng.normal(0.0, 1.0, 400)])

    # Execute
    found = audit.evaluate_scores(with_canary, without_canary, 1e-5)

    # Assert: chosen on the first 200 of each side, counted on the other 200.
    assert (found.statistic, found.negated) == (1, False)
    assert (found.positives, found.negatives) == (200, 200)
    assert found.bound > 3.0


def test_a_statistic_the_canary_lowers_is_read_negated() -> None:
    rng = np.random.default_rng(4)
    found = audit.evaluate_scores(rng.normal(-5.0, 1.0, 400), rng.normal(0.0, 1.0, 400), 1e-5)
    assert (found.statistic, found.negated) == (0, True)
    assert found.bound > 3.0


def test_bad_parameters_are_refused_before_any_work() -> None:
    with pytest.raises(InvalidInputError, match="trials 0"):
        audit.run_audit("central", trials=0)
    with pytest.raises(InvalidInputError, match="unit 'user' does not apply to central"):
        audit.run_audit("central", unit="user")
    with pytest.raises(InvalidInputError, match="broken variant"):
        audit.run_audit("central", trials=20, broken="nonsense")
    with pytest.raises(InvalidInputError, match="delta"):
        audit.run_audit("central", trials=20, delta=1.5)


# --- the mechanisms ---------------------------------------------------------------------------------

#: Where halving the noise is visible with few trials: μ = 1 claimed (RDP ε = 1.66 at δ = 0.1), μ = 2
#: run. Simulated: the bound from 4,000 trials has mean 2.6 and sd 0.27; ours stays below 1.3.
HALVED = {"noise_multiplier": 1.0, "sample_rate": 1.0, "steps": 1, "delta": 0.1}
#: Where a release of the canary outright shows with 200 trials: the claim (z = 4: ε = 1.01 at
#: δ = 1e-5) is below the most 50 evaluation trials per side can show (2.57).
LEAKY = {"noise_multiplier": 4.0, "sample_rate": 1.0, "steps": 1, "delta": 1e-5}


def claimed(params: dict[str, Any]) -> float:
    return accounting.mechanism_epsilon(
        params["noise_multiplier"], params["sample_rate"], params["steps"], params["delta"]
    )


def test_central_dp_passes_its_audit() -> None:
    # Execute
    result = audit.run_audit("central", trials=2000, **HALVED)

    # Assert
    assert result.unit == "tenant"
    assert result.epsilon_claimed == pytest.approx(claimed(HALVED))
    assert result.max_provable_epsilon > result.epsilon_claimed  # the audit could have caught a leak
    assert result.passed, result.as_dict()
    assert result.epsilon_lower_bound <= 1.4


def test_central_dp_with_sampled_tenants_over_rounds_passes_its_audit() -> None:
    params = {"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 3, "delta": 0.1}
    result = audit.run_audit("central", trials=2000, **params)
    assert result.epsilon_claimed == pytest.approx(claimed(params))
    assert result.passed, result.as_dict()


def test_central_dp_with_halved_noise_is_flagged() -> None:
    result = audit.run_audit("central", trials=4000, broken="noise-halved", **HALVED)
    assert not result.passed, result.as_dict()
    assert result.epsilon_lower_bound > result.epsilon_claimed


@pytest.mark.parametrize("broken", ["seed-reused", "count-released", "count-normalised"])
def test_central_dp_releasing_the_canary_is_flagged(broken: str) -> None:
    # Execute
    result = audit.run_audit("central", trials=200, broken=broken, **LEAKY)

    # Assert: a perfect test — every canary seen, no false alarm — at the most 200 trials can show;
    # dividing by the observed count shows in the noise's scale, not along the canary's direction.
    assert (result.true_positives, result.false_positives) == (result.positives, 0)
    expected = {"seed-reused": "canary", "count-released": "count", "count-normalised": "-noise_scale"}
    assert result.statistic == expected[broken]
    assert result.epsilon_lower_bound == pytest.approx(result.max_provable_epsilon)
    assert not result.passed


# DP-SGD: these run `train` with `expected_batch_size`, `noise` and `unit` (the public denominator and
# injectable sources of the node-side rework); `train` without them fails every test below.


@pytest.mark.parametrize("unit", ["record", "user"])
def test_dp_sgd_passes_its_audit(unit: str) -> None:
    result = audit.run_audit("dp-sgd", unit=unit, trials=1000, **HALVED)
    assert result.unit == unit
    assert result.max_provable_epsilon > result.epsilon_claimed
    assert result.epsilon_claimed == pytest.approx(claimed(HALVED))
    assert result.passed, result.as_dict()
    assert result.epsilon_lower_bound <= 1.4


def test_dp_sgd_ignores_a_server_chosen_seed() -> None:
    # A node that obeyed the server's seed would draw the same noise in every trial: the server could
    # regenerate and subtract it, and the canary would show in every run (issue 11, row 3).
    result = audit.run_audit("dp-sgd", trials=200, server_seed=1234, **LEAKY)
    assert result.passed, result.as_dict()
    assert result.false_positives > 0 or result.true_positives < result.positives


@pytest.mark.parametrize("unit", ["record", "user"])
@pytest.mark.parametrize("broken", ["seed-reused", "count-released", "count-normalised"])
def test_dp_sgd_releasing_the_canary_is_flagged(broken: str, unit: str) -> None:
    result = audit.run_audit("dp-sgd", unit=unit, trials=400, broken=broken, **LEAKY)
    # The canary shows in (nearly) every release with it and (nearly) never without it; a statistical
    # leak (count-normalised) may miss or mistake a trial or two, the verdict must not change.
    assert result.true_positives >= 0.9 * result.positives, result.as_dict()
    assert result.false_positives <= 0.05 * result.negatives, result.as_dict()
    assert not result.passed, result.as_dict()


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["record", "user"])
def test_dp_sgd_with_halved_noise_is_flagged(unit: str) -> None:
    result = audit.run_audit("dp-sgd", unit=unit, trials=4000, broken="noise-halved", **HALVED)
    assert not result.passed, result.as_dict()


@pytest.mark.slow
def test_dp_sgd_over_sampled_steps_passes_with_many_trials() -> None:
    params = {"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 4, "delta": 1e-3}
    result = audit.run_audit("dp-sgd", trials=4000, **params)
    assert result.epsilon_claimed == pytest.approx(claimed(params))
    assert result.max_provable_epsilon > result.epsilon_claimed
    assert result.passed, result.as_dict()


# --- the command ------------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """`accute-fl` in-process through its real entry point (the audit needs no database)."""

    def run(*args: str) -> Run:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def one_line_error(run: Run) -> bool:
    return run.err.startswith("error: ") and run.err.count("\n") == 1 and "Traceback" not in run.err


def test_audit_command_prints_the_result_as_json(cli: Callable[..., Run]) -> None:
    # Execute
    result = cli(
        "privacy", "audit", "--mechanism", "central", "--noise-multiplier", "4", "--trials", "200", "--json"
    )

    # Assert
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert {
        "epsilon_lower_bound",
        "epsilon_claimed",
        "trials",
        "confidence",
        "mechanism",
        "unit",
        "max_provable_epsilon",
    } <= set(record)
    assert record["mechanism"] == "central" and record["unit"] == "tenant"
    assert record["trials"] == 200 and record["confidence"] == 0.95
    assert record["epsilon_claimed"] == pytest.approx(claimed(LEAKY))
    assert 0.0 <= record["epsilon_lower_bound"] <= record["epsilon_claimed"]
    assert record["max_provable_epsilon"] == pytest.approx(audit.max_provable_epsilon(50, 50, 1e-5))


def test_audit_command_fails_with_exit_8_on_a_leaking_mechanism(cli: Callable[..., Run]) -> None:
    # Execute
    result = cli(
        "privacy", "audit", "--mechanism", "central", "--noise-multiplier", "4", "--trials", "200",
        "--broken", "seed-reused", "--json",
    )  # fmt: skip

    # Assert: the measurement is printed, then one line says what failed.
    assert result.code == audit.EXIT_AUDIT_FAILED == 8
    assert json.loads(result.out)["epsilon_lower_bound"] > json.loads(result.out)["epsilon_claimed"]
    assert one_line_error(result) and "audit failed" in result.err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--trials", "0"), "trials 0 must be between"),
        (("--mechanism", "local"), "mechanism 'local' is unknown"),
        (("--mechanism", "central", "--unit", "record"), "unit 'record' does not apply"),
        (("--delta", "2"), "delta 2.0 must be in (0, 1)"),
        (("--noise-multiplier", "0"), "noise multiplier 0.0 must be"),
        (("--sample-rate", "1.5"), "sample rate 1.5 must be in (0, 1]"),
        (("--steps", "0"), "steps 0 must be between"),
    ],
)
def test_audit_command_refuses_bad_input_in_one_line(
    cli: Callable[..., Run], args: tuple[str, ...], fragment: str
) -> None:
    result = cli("privacy", "audit", *args)
    assert result.code == 2
    assert one_line_error(result) and fragment in result.err
    assert result.out == ""


@pytest.mark.slow  # two processes that import the whole CLI (opacus, torch): 10-25 s here
def test_audit_through_the_installed_console_script(tmp_path: Path) -> None:
    # Prepare
    script = shutil.which("accute-fl") or str(Path(sys.executable).with_name("accute-fl"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, "privacy", "audit", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    # Execute
    bad = run("--trials", "0")
    good = run("--mechanism", "central", "--noise-multiplier", "4", "--trials", "100")

    # Assert
    assert bad.returncode == 2 and bad.stderr.startswith("error: trials 0") and bad.stderr.count("\n") == 1
    assert good.returncode == 0, good.stderr
    assert "epsilon_lower_bound" in good.stdout and "tenant" in good.stdout
    assert list(tmp_path.iterdir()) == []  # an audit writes nothing
