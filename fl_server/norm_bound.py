"""The largest update norm an honest local DP-SGD node produces, with high probability (pure math).

Why. Without ``max_update_norm`` and without central clipping the server bounds update norms by
``NORM_BOUND_FACTOR`` x the median norm of accepted updates (``fl_server.strategy``). Under local
DP-SGD that rejects honest small tenants: a node's noise is divided by its public expected batch
size B, so a tenant with few consented users (small B) returns an update dominated by noise, many
times the median of larger tenants' updates (measured: 42 against a bound of 19). The strategy
therefore bounds each reply by ``max(NORM_BOUND_FACTOR x median, dp_update_bound(...))``, where
``dp_update_bound`` depends only on the *public* parameters of that node's instruction: noise
multiplier, clipping norm, steps, learning rate, sampling rate, the expected batch size (the
public denominator) and a public upper bound on the node's number of units, never on its private
record count.

Derivation. A node's DP-SGD (``fl_client.dp_training.train``: plain SGD, no momentum) makes T
steps from the global weights w_0 it was sent::

    w_t = w_{t-1} - (eta / B) (G_t + Z_t),   G_t = sum over u in S_t of clip_C(g_u),
    Z_t ~ N(0, sigma^2 C^2 I_d) drawn afresh at step t,

where S_t is the step's Poisson sample (each of the node's N units with probability q), so
||G_t|| <= C |S_t|. Hence, by the triangle inequality,

    ||w_T - w_0|| <= (eta / B) (C sum_t |S_t| + ||sum_t Z_t||).

1. Noise. Each Z_t is independent of Z_1..Z_{t-1} (the weights it meets depend on earlier draws,
   but its own distribution does not), so sum_t Z_t ~ N(0, T sigma^2 C^2 I_d), i.e.
   sigma C sqrt(T) ||X|| with X ~ N(0, I_d). ||.|| is 1-Lipschitz and E||X|| <= sqrt(d), so by
   Gaussian concentration (Boucheron, Lugosi, Massart, Thm 5.6)
   P(||X|| >= sqrt(d) + sqrt(2 ln(1/delta_1))) <= delta_1.
2. Sampling. sum_t |S_t| ~ Binomial(T N, q). N is private, but N <= N_max, a public bound (user
   level: the users in the consent snapshot; record level: those users x the per-user record cap
   the server already applies to a non-private weight claim), and a binomial grows
   stochastically with its number of trials, so Binomial(T N_max, q) dominates it. Bernstein's
   inequality with variance <= mu = T N_max q: P(X >= mu + s) <= exp(-s^2 / (2 (mu + s / 3))),
   which equals delta_2 at s = L/3 + sqrt(L^2/9 + 2 mu L), L = ln(1/delta_2). Also X <= T N_max.

With delta_1 = delta_2 = failure / 2 (union bound), an honest node exceeds

    (eta / B) (C min(T N_max, mu + s) + sigma C sqrt(T) (sqrt(d) + sqrt(2 ln(2 / failure))))

with probability at most ``failure`` (per reply). A relative ``FLOAT_SLACK`` covers float32
rounding of the weights (the noise is added in float64 and rounded once per step).

Momentum and Adam. Nodes run plain SGD. Heavy-ball momentum beta (m_t = beta m_{t-1} + G_t + Z_t,
w_t = w_{t-1} - (eta / B) m_t) gives w_T - w_0 = -(eta / B) sum_t c_t (G_t + Z_t) with
c_t = (1 - beta^(T-t+1)) / (1 - beta) in [1, 1 / (1 - beta)]: the clipped part grows by at most
1 / (1 - beta) and the noise is N(0, sum_t c_t^2 sigma^2 C^2 I_d) with sum_t c_t^2 <= T / (1 - beta)^2,
so both terms are multiplied by 1 / (1 - beta) (``momentum``). Adam divides each coordinate by
its own running scale: the noise no longer shrinks with 1 / B, each coordinate moves by about
eta per step whatever sigma and C are, and this bound does not apply; no node uses it, and
``dp_update_bound`` does not pretend to cover it (a server that instructed Adam should keep the
median rule or bound by eta T sqrt(d) times Adam's per-coordinate step bound).

What it does not cover. The record-level N_max is the per-user record cap, a public plausibility
bound, not a guarantee: an honest node with more records per user than the cap can exceed the
clipped term, which is why the strategy keeps the median rule alongside (the max of both).
Buffers (weights trained without noise) would move outside the bound; no task's model has any.
The bound decides acceptance only: what is charged and what is released do not depend on it. A
dishonest node can always send anything up to its bound; a small tenant's bound is large because
its honest update is that noisy, and in DP runs every accepted update has the same weight.
"""

from __future__ import annotations

import math

#: Probability that an honest node's update exceeds its DP-aware bound (per reply).
FAILURE_PROBABILITY = 1e-6
#: Relative margin for float32 rounding of the weights.
FLOAT_SLACK = 1e-3


def gaussian_norm_tail(d: int, failure: float) -> float:
    """t with P(||N(0, I_d)|| >= t) <= ``failure``: sqrt(d) + sqrt(2 ln(1 / failure))."""
    _check_probability(failure)
    if d < 0:
        raise ValueError(f"dimension must be non-negative, got {d}")
    return math.sqrt(d) + math.sqrt(2.0 * math.log(1.0 / failure))


def binomial_upper(trials: float, rate: float, failure: float) -> float:
    """x with P(Binomial(trials, rate) >= x) <= ``failure`` (Bernstein), capped at ``trials``."""
    _check_probability(failure)
    if trials < 0 or not 0.0 <= rate <= 1.0:
        raise ValueError(f"need trials >= 0 and rate in [0, 1], got {trials}, {rate}")
    mean = trials * rate
    log_term = math.log(1.0 / failure)
    excess = log_term / 3.0 + math.sqrt(log_term * log_term / 9.0 + 2.0 * mean * log_term)
    return min(float(trials), mean + excess)


def dp_update_bound(
    *,
    noise_multiplier: float,
    clip_norm: float,
    steps: int,
    lr: float,
    sample_rate: float,
    expected_batch_size: float,
    max_units: float,
    dimension: int,
    momentum: float = 0.0,
    failure: float = FAILURE_PROBABILITY,
) -> float:
    """The norm an honest DP-SGD node's ``w_T - w_0`` exceeds with probability <= ``failure``.

    All arguments are public: the instruction's parameters, ``max_units`` a public upper bound on
    the node's units (users or records) and ``dimension`` the model's number of weights. See the
    module docstring for the derivation.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    for name, value in (("clip_norm", clip_norm), ("lr", lr), ("expected_batch_size", expected_batch_size)):
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"{name} must be positive, got {value}")
    if steps < 0 or max_units < 0:
        raise ValueError(f"steps and max_units must be >= 0, got {steps}, {max_units}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    _check_probability(failure)
    if steps == 0:
        return 0.0
    half = failure / 2.0
    clipped = clip_norm * binomial_upper(steps * max_units, sample_rate, half)
    noise = noise_multiplier * clip_norm * math.sqrt(steps) * gaussian_norm_tail(dimension, half)
    scale = lr / (expected_batch_size * (1.0 - momentum))
    return (1.0 + FLOAT_SLACK) * scale * (clipped + noise)


def _check_probability(failure: float) -> None:
    if not 0.0 < failure < 1.0:
        raise ValueError(f"failure probability must be in (0, 1), got {failure}")
