"""Pure DP math: epsilon of a history of DP events, and the noise multiplier for a target epsilon.

No I/O. Two accountants:

- ``rdp`` (default): Renyi DP of the Poisson-subsampled Gaussian mechanism at a fixed grid of
  orders (Opacus' ``compute_rdp``, Mironov et al. 2019), composed by adding curves, converted to
  (epsilon, delta) with the bound of Balle et al. 2020 (Prop. 12 of arXiv:2004.00010, as in
  dp-accounting). RDP composes additively, so a ledger can keep its cumulative curve and charge
  one event in O(number of orders) instead of replaying its history.
- ``prv``: numerical composition of privacy loss random variables (Opacus' ``PRVAccountant``,
  Gopi et al. 2021); tighter, slower, replays the history. It returns the smaller of its upper
  bound and the ``rdp`` value: both are valid upper bounds, so the minimum is one too — except
  where Opacus' PRV leaves its valid range: its privacy loss domain is exponentiated, and past
  epsilon ~ 700 (exp overflows at 709.8) it returned 716.8 where the exact value is 5,425. There
  the ``rdp`` value is returned (``PRV_DOMAIN_LIMIT``). PRV results are memoized by the events'
  content, so a ledger computes them before it takes its row lock and finds them again under it.

An event without noise (``NonPrivateEvent``) has epsilon +inf under every accountant.

Opacus' ``gdp`` accountant is deliberately absent: it is an approximation, not an upper bound
(measured up to 20 % below the PLD value).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable
from functools import cache, lru_cache

import numpy as np
import numpy.typing as npt

from privacy.accountants import ACCOUNTANTS as ACCOUNTANTS
from privacy.accountants import RDP_ORDERS_KEY
from privacy.accountants import check_accountant as check_accountant
from privacy.events import (
    DpSgdEvent,
    SubsampledGaussian,
    check_delta,
    check_epsilon,
    check_sample_rate,
    check_steps,
    is_non_private,
)
from schema.errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]

#: RDP orders: dp-accounting's default grid (Opacus' plus 11 and 128..1024 for tiny sample rates).
ORDERS: FloatArray = np.array(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024], dtype=np.float64
)
ORDERS.flags.writeable = False

#: Identifies the grid a stored curve is on; a stored curve on another grid is rebuilt by replay.
ORDERS_KEY: str = hashlib.sha256(ORDERS.tobytes()).hexdigest()[:16]
if ORDERS_KEY != RDP_ORDERS_KEY:  # pragma: no cover - a changed grid must change the written-out key
    raise RuntimeError(f"privacy.accountants.RDP_ORDERS_KEY must be {ORDERS_KEY!r} for this order grid")

#: Noise multipliers searched by ``noise_multiplier_for``.
MIN_NOISE_MULTIPLIER = 1e-3
MAX_NOISE_MULTIPLIER = 1e4


_LOG_2 = math.log(2.0)
_LOG_HALF = math.log(0.5)
_SQRT2 = math.sqrt(2.0)

# Integer orders: the binomial expansion of A_alpha has alpha + 1 terms. Their layout depends on the
# grid only, so it is built once: one flat array of (alpha, i) pairs, segmented per order.
_INT_MASK = np.equal(ORDERS, np.floor(ORDERS))
_INT_ALPHAS = ORDERS[_INT_MASK].astype(np.int64)
_INT_I = np.concatenate([np.arange(a + 1, dtype=np.float64) for a in _INT_ALPHAS])
_INT_A = np.repeat(_INT_ALPHAS.astype(np.float64), _INT_ALPHAS + 1)
_INT_STARTS = np.concatenate([[0], np.cumsum(_INT_ALPHAS + 1)[:-1]])


@cache
def _int_log_comb() -> FloatArray:
    """log binomial(alpha, i) for every (alpha, i) pair; built on first use, so reading a stored
    curve's epsilon (``epsilon_from_rdp``) never imports scipy."""
    from scipy import special

    result: FloatArray = (
        special.gammaln(_INT_A + 1) - special.gammaln(_INT_I + 1) - special.gammaln(_INT_A - _INT_I + 1)
    )
    return result


_FRAC_ALPHAS = ORDERS[~_INT_MASK]

#: Fractional orders: terms of the series summed at most. dp-accounting stops at 1,000 and drops
#: the order (+inf); near q = 0.5 to 0.9 the series needs a few thousand, so we go further. An
#: order that still has not converged gets +inf, which only excludes it from the minimum.
MAX_SERIES_TERMS = 50_000
_FIRST_CHUNK, _MAX_CHUNK = 16, 4096


def _int_log_a(q: float, sigma: float) -> FloatArray:
    """log A_alpha at every integer order (Mironov et al. 2019, Sec. 3.3), all orders at once."""
    terms = (
        _int_log_comb()
        + _INT_I * math.log(q)
        + (_INT_A - _INT_I) * math.log1p(-q)
        + (_INT_I * _INT_I - _INT_I) / (2 * sigma**2)
    )
    peak = np.maximum.reduceat(terms, _INT_STARTS)
    sums = np.add.reduceat(np.exp(terms - np.repeat(peak, _INT_ALPHAS + 1)), _INT_STARTS)
    result: FloatArray = peak + np.log(sums)
    return result


def _log_erfc(x: FloatArray) -> FloatArray:
    from scipy import special

    result: FloatArray = _LOG_2 + special.log_ndtr(-x * _SQRT2)
    return result


def _frac_log_a(q: float, sigma: float) -> FloatArray:
    """log A_alpha at every fractional order: the two-sided series of Mironov et al. 2019, Sec. 3.3.

    Like dp-accounting, terms are added with the magnitude of the generalized binomial coefficient,
    which bounds A_alpha from above (the signed series is the exact value), and the series stops
    by dp-accounting's rule. Orders are processed together, in chunks of growing size.
    """
    from scipy import special

    n = _FRAC_ALPHAS.size
    result = np.full(n, np.inf)
    a0, a1 = np.full(n, -np.inf), np.full(n, -np.inf)
    last0, last1 = np.full(n, -np.inf), np.full(n, -np.inf)
    active = np.arange(n)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    start, chunk = 0, _FIRST_CHUNK
    while active.size and start < MAX_SERIES_TERMS:
        i = np.arange(start, min(start + chunk, MAX_SERIES_TERMS), dtype=np.float64)[None, :]
        start, chunk = start + chunk, min(2 * chunk, _MAX_CHUNK)
        alpha = _FRAC_ALPHAS[active][:, None]
        j = alpha - i
        log_coef = special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(j + 1)
        s0 = (
            log_coef
            + i * log_q
            + j * log_1mq
            + (i * i - i) / (2 * sigma**2)
            + _LOG_HALF
            + _log_erfc((i - z0) / (_SQRT2 * sigma))
        )
        s1 = (
            log_coef
            + j * log_q
            + i * log_1mq
            + (j * j - j) / (2 * sigma**2)
            + _LOG_HALF
            + _log_erfc((z0 - j) / (_SQRT2 * sigma))
        )
        c0 = np.logaddexp.accumulate(np.concatenate([a0[active][:, None], s0], axis=1), axis=1)[:, 1:]
        c1 = np.logaddexp.accumulate(np.concatenate([a1[active][:, None], s1], axis=1), axis=1)[:, 1:]
        total = np.logaddexp(c0, c1)
        prev0 = np.concatenate([last0[active][:, None], s0[:, :-1]], axis=1)
        prev1 = np.concatenate([last1[active][:, None], s1[:, :-1]], axis=1)
        done = (s0 < prev0) & (s1 < prev1) & (np.maximum(s0, s1) < total - 30)
        hit = done.any(axis=1)
        first = done.argmax(axis=1)
        result[active[hit]] = total[hit, first[hit]]
        keep = ~hit
        a0[active[keep]], a1[active[keep]] = c0[keep, -1], c1[keep, -1]
        last0[active[keep]], last1[active[keep]] = s0[keep, -1], s1[keep, -1]
        active = active[keep]
    return result


@lru_cache(maxsize=4096)
def step_rdp(sample_rate: float, noise_multiplier: float) -> FloatArray:
    """RDP of one step of the Poisson-subsampled Gaussian at every order of ``ORDERS`` (read-only).

    A vectorized port of dp-accounting's ``RdpAccountant`` computation for this mechanism (Apache
    2.0), bounded in time (at most ``MAX_SERIES_TERMS`` terms per order) and capped by the
    unsampled Gaussian's RDP. Cached: a training configuration repeats the same (q, z) round after
    round.
    """
    q, sigma = float(sample_rate), float(noise_multiplier)
    with np.errstate(all="ignore"):
        if q == 1.0:
            curve = ORDERS / (2 * sigma**2)
        else:
            log_a = np.empty_like(ORDERS)
            log_a[_INT_MASK] = _int_log_a(q, sigma)
            log_a[~_INT_MASK] = _frac_log_a(q, sigma)
            # Subsampling never hurts: the unsampled Gaussian's RDP bounds every q (joint convexity),
            # which also repairs orders whose series did not converge or overshot near q = 1.
            curve = np.minimum(log_a / (ORDERS - 1), ORDERS / (2 * sigma**2))
    # A NaN or a tiny negative from cancellation must never lower epsilon.
    curve = np.where(np.isnan(curve), np.inf, np.maximum(curve, 0.0))
    curve.flags.writeable = False
    return curve


def event_rdp(event: SubsampledGaussian) -> FloatArray:
    """RDP curve of one event: ``steps`` compositions of its subsampled Gaussian (+inf without noise)."""
    if is_non_private(event):
        return np.full_like(ORDERS, np.inf)
    if event.steps == 0:
        return np.zeros_like(ORDERS)
    return step_rdp(event.sample_rate, event.noise_multiplier) * float(event.steps)


def empty_curve() -> FloatArray:
    return np.zeros_like(ORDERS)


def compose(events: Iterable[SubsampledGaussian], start: FloatArray | None = None) -> FloatArray:
    """Cumulative RDP curve of ``events`` in order, added one by one onto ``start``.

    Adding in ledger order makes a replay bit-identical to the curve a ledger kept incrementally.
    """
    curve = empty_curve() if start is None else np.array(start, dtype=np.float64)
    for event in events:
        curve = curve + event_rdp(event)
    return curve


def epsilon_from_rdp(curve: FloatArray, delta: float) -> float:
    """Smallest epsilon over the orders for an RDP curve at ``delta`` (Balle et al. 2020, Prop. 12).

    Where ``delta >= sqrt(1 - exp(-rdp))`` the KL bound already gives epsilon 0, as in dp-accounting.
    """
    check_delta(delta)
    rdp = np.asarray(curve, dtype=np.float64)
    if rdp.shape != ORDERS.shape:
        raise InvalidInputError(f"an RDP curve has {ORDERS.size} orders, not {rdp.size}")
    with np.errstate(all="ignore"):
        eps = rdp + np.log1p(-1.0 / ORDERS) - np.log(delta * ORDERS) / (ORDERS - 1.0)
        eps = np.where(delta**2 + np.expm1(-rdp) > 0, 0.0, eps)
    eps = np.where(np.isnan(eps), np.inf, eps)
    return float(max(0.0, float(eps.min())))


def epsilons_from_rdp(curves: FloatArray, deltas: FloatArray) -> FloatArray:
    """``epsilon_from_rdp`` of many curves at once (one row per curve, one delta per row).

    The same element-wise operations in the same order as the single-curve function, so each
    value is bit-identical to it; one numpy pass instead of one per budget keeps an overview of
    thousands of budgets (``budget show``, the admin API, ``/metrics``) in milliseconds.
    """
    rdp = np.asarray(curves, dtype=np.float64)
    if rdp.ndim != 2 or rdp.shape[1] != ORDERS.size:
        raise InvalidInputError(f"RDP curves must be rows of {ORDERS.size} orders, not shape {rdp.shape}")
    delta = np.asarray(deltas, dtype=np.float64).reshape(-1, 1)
    for value in sorted(set(delta.ravel().tolist())):  # not np.unique: it imports numpy.ma (~15 ms)
        check_delta(value)
    with np.errstate(all="ignore"):
        eps = rdp + np.log1p(-1.0 / ORDERS) - np.log(delta * ORDERS) / (ORDERS - 1.0)
        eps = np.where(delta**2 + np.expm1(-rdp) > 0, 0.0, eps)
    eps = np.where(np.isnan(eps), np.inf, eps)
    if not len(eps):
        return np.zeros(0, dtype=np.float64)
    lowest = eps.min(axis=1)
    return np.where(lowest > 0.0, lowest, 0.0)  # as max(0.0, x): never -0.0


def _grouped(events: Iterable[SubsampledGaussian]) -> tuple[tuple[float, float, int], ...]:
    """(z, q, total steps) per distinct mechanism, sorted: composition commutes, so steps add up."""
    totals: dict[tuple[float, float], int] = {}
    for event in events:
        if event.steps:
            key = (event.noise_multiplier, event.sample_rate)
            totals[key] = totals.get(key, 0) + event.steps
    return tuple(sorted((z, q, steps) for (z, q), steps in totals.items()))


#: The PRV discretization's size limit (points); about 1 s and 50 MB per million points here.
MAX_PRV_POINTS = 4_000_000

#: Opacus' PRV exponentiates its privacy-loss domain; past this half-width (exp overflows at
#: 709.78) its answer is not a bound any more, so the RDP value stands instead.
PRV_DOMAIN_LIMIT = 700.0


def _prv_run(history: tuple[tuple[float, float, int], ...], delta: float, eps_error: float) -> float:
    from opacus.accountants import PRVAccountant  # torch: only PRV callers pay for it

    accountant = PRVAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta, eps_error=eps_error))


def prv_epsilon(events: Iterable[SubsampledGaussian], delta: float) -> float:
    """Epsilon by PRV composition (Opacus' ``PRVAccountant``), never above the RDP value.

    Opacus' error bound ``eps_error`` is absolute and sets the mesh (cost ~ 1 / eps_error): we ask
    for 1 % of the RDP value, refine once to 1 % of the first estimate when the RDP value was
    loose, and never let the mesh exceed ``MAX_PRV_POINTS`` (the bound stays valid, only looser).
    Out of Opacus' valid range (``PRV_DOMAIN_LIMIT``) the RDP value is returned. Memoized.
    """
    check_delta(delta)
    events = list(events)
    if any(is_non_private(e) for e in events):
        return math.inf
    return _prv_epsilon(_grouped(events), float(delta))


@lru_cache(maxsize=1024)
def _prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    curve = sum((step_rdp(q, z) * float(t) for z, q, t in history), empty_curve())
    rdp_eps = epsilon_from_rdp(curve, delta)
    if not history or not math.isfinite(rdp_eps) or rdp_eps == 0.0:
        return rdp_eps
    # Opacus' domain: half-width L (an RDP bound at delta_error / 4, plus 3), mesh from eps_error.
    delta_error = delta / 1000
    half_width = epsilon_from_rdp(curve, delta_error / 4) + 3
    if not half_width < PRV_DOMAIN_LIMIT:
        return rdp_eps  # exp(L) overflows inside Opacus: its result would not be a bound
    total_steps = sum(t for _, _, t in history)
    finest = 2 * half_width * math.sqrt(total_steps * math.log(12 / delta_error) / 2) / MAX_PRV_POINTS
    try:
        eps_error = max(0.01 * rdp_eps, finest)
        bound = _prv_run(history, delta, eps_error)
        estimate = bound - eps_error
        if eps_error > 0.02 * estimate and eps_error > finest:
            eps_error = max(0.01 * estimate, finest)
            bound = _prv_run(history, delta, eps_error)
    except (ValueError, RuntimeError, MemoryError, OverflowError, FloatingPointError):
        return rdp_eps  # the discretization failed for these values; the RDP bound still holds
    if not math.isfinite(bound) or bound >= PRV_DOMAIN_LIMIT:
        return rdp_eps
    return min(max(bound, 0.0), rdp_eps)


def epsilon(events: Iterable[SubsampledGaussian], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of a whole history of events at ``delta`` with the named accountant."""
    check_accountant(accountant)
    if accountant == "prv":
        return prv_epsilon(events, delta)
    return epsilon_from_rdp(compose(events), delta)


def mechanism_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon of ``steps`` compositions of one Poisson-subsampled Gaussian (the CLI's question)."""
    return epsilon([DpSgdEvent(noise_multiplier, sample_rate, steps)], delta, accountant)


def noise_multiplier_for(
    target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier (to 0.01 % relative) whose epsilon is at most ``target_epsilon``.

    Bisection on z: epsilon falls as z grows. The value returned always meets the target.
    """
    check_epsilon(target_epsilon, "target epsilon")
    check_sample_rate(sample_rate)
    check_steps(steps)
    check_delta(delta)
    check_accountant(accountant)
    if steps == 0:
        raise InvalidInputError("steps is 0: no noise is needed; give the number of steps (>= 1)")

    def eps(z: float) -> float:
        return mechanism_epsilon(z, sample_rate, steps, delta, accountant)

    lo, hi = 1.0, 1.0
    if eps(hi) <= target_epsilon:
        while eps(lo) <= target_epsilon:
            if lo <= MIN_NOISE_MULTIPLIER:
                return MIN_NOISE_MULTIPLIER
            hi, lo = lo, max(lo / 2, MIN_NOISE_MULTIPLIER)
    else:
        while eps(hi) > target_epsilon:
            if hi >= MAX_NOISE_MULTIPLIER:
                raise InvalidInputError(
                    f"target epsilon {target_epsilon} needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g}; "
                    "raise the target, lower the sample rate or the steps"
                )
            lo, hi = hi, min(hi * 2, MAX_NOISE_MULTIPLIER)
    while (hi - lo) / hi > 1e-4:
        mid = (lo + hi) / 2
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
