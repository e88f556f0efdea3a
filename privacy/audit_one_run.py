"""Privacy audit in one run of the mechanism (Steinke, Nasr and Jagielski, NeurIPS 2023).

Instead of thousands of runs with and without one canary, one run with m canaries, each included
independently with probability 1/2 by a fair coin the mechanism never sees. The attacker scores
every canary, guesses "in" for the k highest scores and "out" for the k lowest (r = 2k guesses) and
counts its correct guesses v. If the mechanism is (ε, δ)-DP for each canary (add/remove one unit),
then (their Theorem 3.1 / Algorithm of the appendix, with p = e^ε / (1 + e^ε))

    P[V ≥ v] ≤ P[Binomial(r, p) ≥ v] + 2mδ · max_{1 ≤ i ≤ v} P[v > Binomial(r, p) ≥ v - i] / i,

so the largest ε whose p-value is below 1 - confidence is a lower bound at that confidence. A few
guess sizes k are tried, Bonferroni-corrected. One run is cheap but weaker than the many-run audit
(the canaries share the noise budget of a single run, and δ is multiplied by 2m), so use it as a
quick check; `privacy.audit.run_audit` is the audit that decides.

The attacker subtracts a reference run without any canary (same public data, the mechanism's own
randomness): independent of the coins, so it never invalidates the bound, and it cancels noise
that repeats across runs (a reused seed) exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from privacy import audit
from privacy.events import check_delta
from schema.errors import InvalidInputError

DEFAULT_CANARIES = 1000
MIN_CANARIES = 20
MAX_CANARIES = 10_000
#: Guess sizes k (top k "in", bottom k "out") as shares of the canaries; Bonferroni over all of them.
GUESS_SHARES: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25)
#: Broken variants one run can show: the others leak through counts that one run cannot compare.
ONE_RUN_BROKEN: tuple[str, ...] = ("noise-halved", "seed-reused")
#: Public data besides the canaries: records (dp-sgd) or tenants (central) on coordinate 0.
OTHERS = 8


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[at least `correct` of `guesses` right] under (ε, δ)-DP with `canaries` coins (the paper's bound)."""
    from scipy import stats

    if not 0 <= correct <= guesses <= canaries:
        raise InvalidInputError("a one-run audit needs 0 <= correct <= guesses <= canaries")
    p = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, p))
    # P[v > B >= v - i] for i = 1..v: cumulative sums of the pmf below v, from v - 1 down.
    pmf = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, p)
    ratios = np.cumsum(pmf) / np.arange(1, correct + 1) if correct > 0 else np.zeros(1)
    return min(1.0, tail + 2.0 * canaries * delta * float(np.max(ratios)))


def epsilon_bound(canaries: int, guesses: int, correct: int, delta: float, alpha: float) -> float:
    """The largest ε whose p-value is at most `alpha` (0 when even ε = 0 is not rejected)."""
    if p_value(canaries, guesses, correct, 0.0, delta) > alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(canaries, guesses, correct, hi, delta) <= alpha:
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return lo
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(canaries, guesses, correct, mid, delta) <= alpha else (lo, mid)
    return lo


@dataclass(frozen=True)
class OneRunResult(audit.AuditVerdict):
    """What a one-run audit measured: guesses on coin-flipped canaries of a single run."""

    canaries: int
    guesses: int
    correct: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.verdict_dict("one-run", 1),
            "canaries": self.canaries,
            "guesses": self.guesses,
            "correct": self.correct,
        }


def _dp_sgd_scores(
    noise_multiplier: float, sample_rate: float, steps: int, broken: str | None, seed_data: int
) -> Callable[[npt.NDArray[np.bool_]], npt.NDArray[np.float64]]:
    """scores(coins): one `train` run with the included canaries, minus a run without any."""
    import torch

    from fl_client.dp_training import train

    def run(canary_features: int, coins: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        columns = ("a", *(f"c{i}" for i in range(canary_features)))
        task = audit.audit_task(columns, outputs=1)
        rng = np.random.default_rng(seed_data)
        zeros = dict.fromkeys(columns, 0.0)
        records = [
            {**zeros, "a": float(rng.uniform(0.5, 1.5)), "y": float(rng.normal())} for _ in range(OTHERS)
        ]
        records += [{**zeros, f"c{i}": 1.0, "y": audit.CANARY_TARGET} for i in np.flatnonzero(coins)]
        expected_batch_size = sample_rate * (OTHERS + canary_features / 2)
        result = train(
            task,
            {"0.weight": torch.zeros(1, len(columns))},
            records,
            consented_user_ids=None,
            noise_multiplier=noise_multiplier,
            clip_norm=audit.CLIP_NORM,
            sample_rate=sample_rate,
            steps=steps,
            lr=audit.STEP * expected_batch_size,
            dp=True,
            expected_batch_size=expected_batch_size,
            noise=audit.broken_noise_source(broken)(),
            unit="record",
        )
        moved: npt.NDArray[np.float64] = -result.delta["0.weight"][0, 1:].double().numpy()
        return moved / (audit.STEP * audit.CLIP_NORM)

    def scores(coins: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        return run(len(coins), coins) - run(len(coins), np.zeros_like(coins))

    return scores


def _central_scores(
    noise_multiplier: float, sample_rate: float, steps: int, broken: str | None, seed_data: int
) -> Callable[[npt.NDArray[np.bool_]], npt.NDArray[np.float64]]:
    """scores(coins): `steps` rounds of `CentralDPSum` with the included canary tenants, minus none."""
    from aggregation.central_dp import CentralDPSum
    from aggregation.spec import ModelSpec
    from privacy.secure_noise import gaussian, secure_uniform

    def run(coins: npt.NDArray[np.bool_], included: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        size = 1 + len(coins)
        rng = np.random.default_rng(seed_data)
        updates = []
        for _ in range(OTHERS):
            update = np.zeros(size, dtype=np.float32)
            update[0] = rng.uniform(-2.0, 2.0)
            updates.append(update)
        for i in np.flatnonzero(included):
            update = np.zeros(size, dtype=np.float32)
            update[1 + i] = 100.0
            updates.append(update)
        spec = ModelSpec.from_arrays({"w": updates[0]})
        denominator = sample_rate * (OTHERS + len(coins) / 2)
        noise = audit.broken_noise_source(broken)() or gaussian
        model = np.zeros(size)
        for _ in range(steps):
            dp = CentralDPSum(
                spec, clipping_norm=audit.CLIP_NORM, noise_multiplier=noise_multiplier, noise=noise
            )
            for update, u in zip(updates, secure_uniform(len(updates)), strict=True):
                if u < sample_rate:
                    dp.add({"w": update})
            model += dp.result(denominator=denominator)["w"]
        moved: npt.NDArray[np.float64] = model[1:] * denominator / audit.CLIP_NORM
        return moved

    def scores(coins: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        return run(coins, coins) - run(coins, np.zeros_like(coins))

    return scores


def guess_sizes(canaries: int) -> list[int]:
    return sorted({max(1, int(share * canaries)) for share in GUESS_SHARES if 2 * share <= 1})


def evaluate_guesses(
    scores: npt.NDArray[np.float64], coins: npt.NDArray[np.bool_], delta: float, confidence: float
) -> tuple[float, int, int, float]:
    """(bound, guesses, correct, max provable): the best guess size, Bonferroni over all tried."""
    m = len(scores)
    sizes = guess_sizes(m)
    alpha = (1.0 - confidence) / len(sizes)
    order = np.argsort(scores, kind="stable")
    tried = []
    for k in sizes:
        correct = int(coins[order[-k:]].sum()) + int((~coins[order[:k]]).sum())
        tried.append((epsilon_bound(m, 2 * k, correct, delta, alpha), 2 * k, correct))
    bound, guesses, correct = max(tried, key=lambda t: t[0])
    cap = max(epsilon_bound(m, 2 * k, 2 * k, delta, alpha) for k in sizes)
    return bound, guesses, correct, cap


def one_run_audit(
    mechanism: str = "dp-sgd",
    *,
    noise_multiplier: float = 1.0,
    sample_rate: float = 1.0,
    steps: int = 1,
    canaries: int = DEFAULT_CANARIES,
    delta: float = 1e-5,
    unit: str | None = None,
    broken: str | None = None,
    seed_data: int = 0,
    confidence: float = audit.DEFAULT_CONFIDENCE,
) -> OneRunResult:
    """One run with `canaries` coin-flipped canaries (record level for dp-sgd, tenant level for central)."""
    from privacy.accounting import mechanism_epsilon
    from privacy.secure_noise import secure_uniform

    unit = audit.check_audit_params(mechanism, unit, noise_multiplier, sample_rate, steps, audit.MIN_TRIALS)
    if unit == "user":
        raise InvalidInputError("a one-run audit runs at record level (dp-sgd) or tenant level (central)")
    check_delta(delta)
    if isinstance(canaries, bool) or not MIN_CANARIES <= canaries <= MAX_CANARIES:
        raise InvalidInputError(f"canaries {canaries} must be between {MIN_CANARIES} and {MAX_CANARIES}")
    if broken is not None and broken not in ONE_RUN_BROKEN:
        raise InvalidInputError(f"a one-run audit can run these broken variants: {', '.join(ONE_RUN_BROKEN)}")
    make = _dp_sgd_scores if mechanism == "dp-sgd" else _central_scores
    scores = make(noise_multiplier, sample_rate, steps, broken, seed_data)
    coins = secure_uniform(canaries) < 0.5
    bound, guesses, correct, cap = evaluate_guesses(scores(coins), coins, delta, confidence)
    return OneRunResult(
        mechanism=mechanism,
        unit=unit,
        broken=broken,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        canaries=canaries,
        confidence=confidence,
        epsilon_lower_bound=bound,
        epsilon_claimed=mechanism_epsilon(noise_multiplier, sample_rate, steps, delta, "rdp"),
        max_provable_epsilon=cap,
        guesses=guesses,
        correct=correct,
    )
