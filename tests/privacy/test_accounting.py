"""The pure math: our epsilon against dp-accounting (RDP and PLD), properties, noise calibration."""

from __future__ import annotations

import logging
import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis.rdp import compute_rdp as opacus_compute_rdp

from privacy import accounting
from privacy.events import MECHANISMS, CentralDpEvent, DpSgdEvent
from schema.errors import InvalidInputError
from schema.models.privacy import PRIVACY_MECHANISMS

MNIST_Q = 256 / 60000
MNIST_STEPS = 60 * 60000 // 256  # 60 epochs

# (z, q, steps, delta): the classic settings, then the edges (q = 1, tiny q, very many steps).
RDP_CASES = [
    (1.1, MNIST_Q, MNIST_STEPS, 1e-5),
    (4.0, 0.01, 10_000, 1e-5),
    (1.0, 1.0, 1, 1e-5),
    (1.0, 1.0, 100, 1e-5),
    (5.0, 1.0, 1000, 1e-6),
    (0.8, 1e-6, 1000, 1e-5),
    (1.0, 1e-7, 10**6, 1e-5),
    (1.0, 1e-4, 10**6, 1e-5),
    (0.7, 0.01, 100_000, 1e-6),
    (1.1, 0.004, 10**7, 1e-5),
    (1.1, 0.004, 10**9, 1e-5),
    (2.0, 0.5, 50, 1e-5),
    (0.5, 0.1, 10, 1e-3),
    (10.0, 0.001, 1000, 1e-5),
    (0.3, 0.02, 1, 1e-5),
]


def reference_event(z: float, q: float, steps: int) -> dpa.DpEvent:
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)


def reference_rdp(z: float, q: float, steps: int, delta: float) -> float:
    accountant = RdpAccountant()
    accountant.compose(reference_event(z, q, steps))
    return float(accountant.get_epsilon(delta))


@pytest.fixture(autouse=True)
def _quiet_dp_accounting() -> None:
    logging.getLogger("absl").setLevel(logging.ERROR)


@pytest.mark.parametrize(("z", "q", "steps", "delta"), RDP_CASES)
def test_rdp_epsilon_is_within_one_percent_of_dp_accounting(
    z: float, q: float, steps: int, delta: float
) -> None:
    # Execute
    ours = accounting.mechanism_epsilon(z, q, steps, delta, "rdp")
    reference = reference_rdp(z, q, steps, delta)

    # Assert
    assert reference > 0
    assert ours == pytest.approx(reference, rel=0.01)


def test_classic_settings_have_their_published_epsilons() -> None:
    # Abadi et al. / Opacus MNIST example and the dp-accounting README setting, as dp-accounting gives them.
    assert accounting.mechanism_epsilon(1.1, MNIST_Q, MNIST_STEPS, 1e-5) == pytest.approx(2.5966, abs=1e-4)
    assert accounting.mechanism_epsilon(4.0, 0.01, 10_000, 1e-5) == pytest.approx(1.0355, abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    q=st.floats(min_value=1e-7, max_value=0.99),
    z=st.floats(min_value=0.4, max_value=30.0),
)
def test_step_rdp_matches_dp_accounting_and_bounds_opacus(q: float, z: float) -> None:
    # Execute
    ours = accounting.step_rdp(q, z)
    reference = dp_rdp._compute_rdp_poisson_subsampled_gaussian(q, z, accounting.ORDERS)
    opacus = np.asarray(opacus_compute_rdp(q=q, noise_multiplier=z, steps=1, orders=list(accounting.ORDERS)))

    # Assert: dp-accounting's values, capped by the unsampled Gaussian's RDP (alpha / 2 z^2); where
    # dp-accounting gave up on a series (+inf after 1,000 terms) ours went on, under that cap ...
    cap = accounting.ORDERS / (2 * z**2)
    converged = np.isfinite(reference)
    assert np.allclose(ours[converged], np.minimum(reference, cap)[converged], rtol=1e-9, atol=1e-13)
    assert np.all(ours[~converged] <= cap[~converged])
    # ... and never below Opacus' signed series, which is the exact value: ours is an upper bound.
    both = np.isfinite(opacus)
    assert np.all(ours[both] >= opacus[both] * (1 - 1e-9) - 1e-13)


# (z, q, steps, delta, PLD discretization): PLD needs a finer grid where epsilon is small.
PRV_CASES = [
    (1.1, MNIST_Q, MNIST_STEPS, 1e-5, 1e-4),
    (4.0, 0.01, 10_000, 1e-5, 1e-4),
    (1.0, 1.0, 1, 1e-5, 1e-4),
    (1.0, 1.0, 100, 1e-5, 1e-4),
    (1.0, 1e-4, 10**6, 1e-5, 1e-5),
    (0.7, 0.01, 100_000, 1e-6, 1e-4),
    (1.1, 0.004, 10**7, 1e-5, 1e-4),
    (2.0, 0.5, 50, 1e-5, 1e-4),
    (10.0, 0.001, 1000, 1e-5, 1e-5),
]


@pytest.mark.slow
@pytest.mark.parametrize(("z", "q", "steps", "delta", "interval"), PRV_CASES)
def test_prv_epsilon_is_within_three_percent_of_pld_and_never_above_rdp(
    z: float, q: float, steps: int, delta: float, interval: float
) -> None:
    # Prepare
    pld = PLDAccountant(value_discretization_interval=interval)
    pld.compose(reference_event(z, q, steps))

    # Execute
    prv = accounting.mechanism_epsilon(z, q, steps, delta, "prv")
    rdp = accounting.mechanism_epsilon(z, q, steps, delta, "rdp")

    # Assert
    assert prv == pytest.approx(pld.get_epsilon(delta), rel=0.03)
    assert prv <= rdp


def test_prv_of_a_mixed_history_is_between_pld_and_rdp() -> None:
    # Prepare: two DP-SGD configurations and server-side rounds on one ledger.
    events = [
        DpSgdEvent(1.1, 0.01, 2000),
        CentralDpEvent(1.5, 0.1, 200, clip_norm=2.0),
        DpSgdEvent(2.0, 0.02, 500),
    ]
    pld = PLDAccountant(value_discretization_interval=1e-4)
    for event in events:
        pld.compose(reference_event(event.noise_multiplier, event.sample_rate, event.steps))

    # Execute
    prv = accounting.epsilon(events, 1e-5, "prv")
    rdp = accounting.epsilon(events, 1e-5, "rdp")

    # Assert
    assert prv == pytest.approx(pld.get_epsilon(1e-5), rel=0.03)
    assert prv <= rdp


@settings(max_examples=40, deadline=None)
@given(
    z=st.floats(min_value=0.5, max_value=20.0),
    q=st.floats(min_value=1e-5, max_value=1.0),
    steps=st.integers(min_value=1, max_value=10**6),
    extra=st.integers(min_value=1, max_value=10**6),
)
def test_epsilon_grows_with_steps(z: float, q: float, steps: int, extra: int) -> None:
    assert accounting.mechanism_epsilon(z, q, steps, 1e-5) <= accounting.mechanism_epsilon(
        z, q, steps + extra, 1e-5
    )


@settings(max_examples=60, deadline=None)
@given(
    z=st.floats(min_value=0.5, max_value=20.0),
    q=st.floats(min_value=1e-6, max_value=1.0),
    factor=st.floats(min_value=1.01, max_value=10.0),
    steps=st.integers(min_value=1, max_value=10**5),
)
def test_epsilon_grows_with_sample_rate(z: float, q: float, factor: float, steps: int) -> None:
    """Over every epsilon a budget could hold (up to 100).

    Beyond that, with q above about 0.7 and epsilon in the hundreds, the conservative series at
    orders near 1 (dp-accounting's, see ``step_rdp``) can overshoot more at a smaller q; both values
    are still upper bounds, and no cap that large means anything.
    """
    higher = min(1.0, q * factor)
    high = accounting.mechanism_epsilon(z, higher, steps, 1e-5)
    assume(high <= 100)
    assert accounting.mechanism_epsilon(z, q, steps, 1e-5) <= high


@settings(max_examples=40, deadline=None)
@given(
    z=st.floats(min_value=0.5, max_value=20.0),
    factor=st.floats(min_value=1.01, max_value=10.0),
    q=st.floats(min_value=1e-5, max_value=1.0),
    steps=st.integers(min_value=1, max_value=10**5),
)
def test_epsilon_falls_with_noise(z: float, factor: float, q: float, steps: int) -> None:
    assert accounting.mechanism_epsilon(z * factor, q, steps, 1e-5) <= accounting.mechanism_epsilon(
        z, q, steps, 1e-5
    )


def test_rdp_composes_additively_and_a_replay_is_bit_identical() -> None:
    # Prepare
    events = [DpSgdEvent(1.0 + i / 7, 0.01 * (1 + i % 3), 10 + i) for i in range(50)]

    # Execute: one by one onto a stored curve, as a ledger does, versus a replay.
    incremental = accounting.empty_curve()
    for event in events:
        stored = incremental.tobytes()
        incremental = np.frombuffer(stored, dtype=np.float64) + accounting.event_rdp(event)
    replay = accounting.compose(events)

    # Assert
    assert np.array_equal(incremental, replay)
    assert np.allclose(replay, sum(accounting.event_rdp(e) for e in events))


def test_central_dp_event_is_accounted_as_its_subsampled_gaussian() -> None:
    # Prepare: tenant-level DP, clip norm 3, z = 1.2, 10 % of tenants per round, 300 rounds.
    central = CentralDpEvent(noise_multiplier=1.2, sample_rate=0.1, rounds=300, clip_norm=3.0)

    # Execute / Assert: the clip norm scales noise and sensitivity alike, so epsilon ignores it.
    assert central.steps == 300
    assert central.noise_std == pytest.approx(3.6)
    assert accounting.epsilon([central], 1e-5) == pytest.approx(reference_rdp(1.2, 0.1, 300, 1e-5), rel=1e-6)


def test_zero_steps_spend_nothing() -> None:
    assert accounting.epsilon([DpSgdEvent(1.0, 0.5, 0)], 1e-5) == 0.0
    assert accounting.epsilon([], 1e-5, "prv") == 0.0


@pytest.mark.parametrize(
    ("target", "q", "steps", "delta"),
    [
        (2.0, MNIST_Q, MNIST_STEPS, 1e-5),
        (1.0, 0.01, 10_000, 1e-5),
        (8.0, 1.0, 10, 1e-5),
        (0.5, 1e-3, 1000, 1e-6),
    ],
)
def test_noise_for_a_target_epsilon_meets_it_tightly(
    target: float, q: float, steps: int, delta: float
) -> None:
    # Execute
    z = accounting.noise_multiplier_for(target, q, steps, delta)

    # Assert: the target is met, and 0.1 % less noise would miss it; dp-accounting agrees.
    assert accounting.mechanism_epsilon(z, q, steps, delta) <= target
    assert accounting.mechanism_epsilon(z * 0.999, q, steps, delta) > target
    assert reference_rdp(z, q, steps, delta) == pytest.approx(target, rel=0.01)


@pytest.mark.slow
def test_noise_for_a_target_with_prv_is_below_rdp_noise() -> None:
    z_rdp = accounting.noise_multiplier_for(2.0, MNIST_Q, MNIST_STEPS, 1e-5, "rdp")
    z_prv = accounting.noise_multiplier_for(2.0, MNIST_Q, MNIST_STEPS, 1e-5, "prv")
    assert z_prv < z_rdp
    assert accounting.mechanism_epsilon(z_prv, MNIST_Q, MNIST_STEPS, 1e-5, "prv") <= 2.0


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: DpSgdEvent(0.0, 0.1, 10), "noise multiplier"),
        (lambda: DpSgdEvent(-1.0, 0.1, 10), "noise multiplier"),
        (lambda: DpSgdEvent(math.nan, 0.1, 10), "noise multiplier"),
        (lambda: DpSgdEvent(1.0, 0.0, 10), "sample rate"),
        (lambda: DpSgdEvent(1.0, 1.5, 10), "sample rate"),
        (lambda: DpSgdEvent(1.0, 0.1, -1), "steps"),
        (lambda: DpSgdEvent(1.0, 0.1, 2.5), "whole number"),  # type: ignore[arg-type]
        (lambda: CentralDpEvent(1.0, 0.1, 10, clip_norm=0.0), "clip norm"),
        (lambda: accounting.mechanism_epsilon(1.0, 0.1, 10, 0.0), "delta"),
        (lambda: accounting.mechanism_epsilon(1.0, 0.1, 10, 1.0), "delta"),
        (lambda: accounting.mechanism_epsilon(1.0, 0.1, 10, 1e-5, "gdp"), "accountant 'gdp'"),
        (lambda: accounting.noise_multiplier_for(-1.0, 0.1, 10, 1e-5), "target epsilon"),
        (lambda: accounting.noise_multiplier_for(1.0, 0.1, 0, 1e-5), "steps is 0"),
    ],
)
def test_bad_values_raise_one_line_errors(build: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment) as caught:
        build()  # type: ignore[operator]
    assert "\n" not in str(caught.value)


def test_mechanism_names_agree_with_the_ledger_table() -> None:
    assert MECHANISMS == PRIVACY_MECHANISMS
    assert "gdp" not in accounting.ACCOUNTANTS
