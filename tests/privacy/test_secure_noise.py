"""Secure Gaussian noise: the right distribution, from the CSPRNG, never from np.random."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privacy import secure_noise
from schema.errors import InvalidInputError

# Thresholds for statistical tests: a correct sampler fails one with probability about 1e-6.
P_FLOOR = 1e-6
Z_LIMIT = 5.0


def test_samples_are_normal_by_kolmogorov_smirnov_and_chi_square() -> None:
    # Execute
    samples = secure_noise.gaussian(400_000, std=1.0)

    # Assert: the whole CDF (KS), and the mass of 50 equally likely bins, tails included (chi-square).
    assert stats.kstest(samples, "norm").pvalue > P_FLOOR
    edges = stats.norm.ppf(np.linspace(0, 1, 51))
    observed, _ = np.histogram(samples, bins=edges)
    assert stats.chisquare(observed).pvalue > P_FLOOR


def test_mean_and_variance_match_the_requested_std() -> None:
    # Prepare
    n, std = 1_000_000, 3.5

    # Execute
    samples = secure_noise.gaussian((1000, 1000), std=std)

    # Assert: within 5 standard errors of N(0, std^2).
    assert samples.shape == (1000, 1000)
    assert abs(samples.mean()) < Z_LIMIT * std / np.sqrt(n)
    assert abs(samples.var() / std**2 - 1) < Z_LIMIT * np.sqrt(2 / n)
    tail = np.mean(np.abs(samples) > 2 * std)  # P(|Z| > 2) = 0.0455
    assert abs(tail - 0.0455) < Z_LIMIT * np.sqrt(0.0455 * 0.9545 / n)


def test_consecutive_samples_are_uncorrelated_and_chunks_differ() -> None:
    samples = secure_noise.gaussian(2 * secure_noise.CHUNK + 3, std=1.0)
    lag1 = np.corrcoef(samples[:-1], samples[1:])[0, 1]
    assert abs(lag1) < Z_LIMIT / np.sqrt(samples.size)
    head, second = samples[: secure_noise.CHUNK], samples[secure_noise.CHUNK : 2 * secure_noise.CHUNK]
    assert not np.array_equal(head, second)


def test_uniforms_are_uniform_in_the_open_interval() -> None:
    u = secure_noise.secure_uniform(200_000)
    assert u.min() > 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > P_FLOOR


def test_noise_does_not_come_from_numpy_random() -> None:
    # Prepare: the same numpy seed twice.
    np.random.seed(1234)
    first = secure_noise.gaussian(1000, std=1.0)
    np.random.seed(1234)
    second = secure_noise.gaussian(1000, std=1.0)

    # Assert: the global numpy state neither decides nor is consumed by the noise.
    assert not np.array_equal(first, second)
    np.random.seed(1234)
    expected_next = np.random.random()
    np.random.seed(1234)
    secure_noise.gaussian(1000, std=1.0)
    assert np.random.random() == expected_next


def test_add_gaussian_noise_keeps_dtype_and_shape_and_leaves_input_alone() -> None:
    # Prepare
    update = np.full((300, 400), 2.0, dtype=np.float32)

    # Execute
    noisy = secure_noise.add_gaussian_noise(update, std=0.5)

    # Assert
    assert noisy.dtype == np.float32 and noisy.shape == update.shape
    assert np.all(update == 2.0)
    assert abs(float(noisy.mean()) - 2.0) < Z_LIMIT * 0.5 / np.sqrt(update.size)
    assert abs(float(noisy.std()) - 0.5) < 0.01
    assert np.array_equal(secure_noise.add_gaussian_noise(update, std=0.0), update)


@pytest.mark.parametrize(
    ("value", "std"), [(np.zeros(3, dtype=np.int64), 1.0), (np.zeros(3), -1.0), (np.zeros(3), np.nan)]
)
def test_bad_inputs_are_refused(value: np.ndarray, std: float) -> None:
    with pytest.raises(InvalidInputError):
        secure_noise.add_gaussian_noise(value, std)
