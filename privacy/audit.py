"""Empirical privacy audit: run our own mechanism on neighbouring data sets and lower-bound epsilon.

An (epsilon, delta)-DP mechanism M satisfies, for every pair of neighbouring data sets D and
D' = D + {canary} (add/remove one unit: a record, a user or a tenant) and every set S of outputs,

    P[M(D') ∈ S] ≤ e^ε · P[M(D) ∈ S] + δ    and    P[M(D) ∈ S] ≤ e^ε · P[M(D') ∈ S] + δ.

The audit runs the mechanism many times on D and on D' and keeps one number per run, a score: how
far the released update moved along a direction only the canary's clipped gradient (or update)
points in. A threshold on the score is a test "was the canary in?". Its true and false positive
rates, bounded with Clopper-Pearson intervals, give ε ≥ ln((TPR - δ) / FPR) (and the same with the
roles of D and D' swapped: ε ≥ ln((1 - FPR - δ) / (1 - TPR))). This is a *lower* bound that holds
with the stated confidence whatever the mechanism does; a lower bound above the accountant's claim
means the mechanism leaks more than the ledger charges — a release bug (Jagielski, Ullman and Oprea
2020; Nasr et al. 2021).

Statistics, kept honest:

- The trials are split in two: the threshold is chosen on the first half (calibration), the rates
  are counted on the second (evaluation), so choosing the threshold costs no confidence.
- Each rate gets a two-sided Clopper-Pearson interval at the confidence level; the bound uses the
  lower end of TPR and the upper end of FPR, each wrong with probability (1 - confidence) / 2, so
  the bound holds with probability at least ``confidence`` (union bound). Both directions use the
  same two ends, so taking their maximum costs nothing.
- With n evaluation trials per side no test can show more than ``max_provable_epsilon`` (TPR = 1,
  FPR = 0 observed); a mechanism that releases the canary outright (true ε = ∞) reports that cap.

The mechanisms are the product's own code, not a model of it: ``fl_client.dp_training.train`` for
DP-SGD (record or user level) and ``aggregation.CentralDPSum`` with a public denominator for
central DP (tenant level). A final-model audit (the attacker sees only the released update, as the
server does) is weaker than the accountant's worst case (which lets the attacker see every step),
so a correct mechanism should land well below the claim. ``BROKEN`` lists deliberately wrong
variants, built from the injectable noise and sampling sources and an output wrapper — never by
re-implementing the mechanism — that the audit must flag.

Heavy libraries (torch, fl_client, scipy) are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from privacy.events import check_delta, check_noise_multiplier, check_sample_rate
from schema.errors import AccuteError, InvalidInputError

FloatArray = npt.NDArray[np.float64]
NoiseFn = Callable[[tuple[int, ...], float], npt.NDArray[Any]]
UniformFn = Callable[[int], npt.NDArray[np.float64]]

Mechanism = Literal["dp-sgd", "central"]
MECHANISMS: tuple[str, ...] = ("dp-sgd", "central")
#: The unit of privacy each mechanism protects (the first is the default).
UNITS: dict[str, tuple[str, ...]] = {"dp-sgd": ("record", "user"), "central": ("tenant",)}
#: Deliberately broken variants the audit must flag (tests and demonstrations only).
BROKEN: tuple[str, ...] = ("noise-halved", "seed-reused", "count-released", "count-normalised")
#: What the attacker computes from each release; it picks one (and a threshold) on the calibration half.
STATISTICS: tuple[str, ...] = ("canary", "noise_scale", "count")

DEFAULT_TRIALS = 2000
MIN_TRIALS = 20
#: A bound on work (and memory: one float per trial) an audit may ask for.
MAX_TRIALS = 1_000_000
#: Steps (DP-SGD) or rounds (central) per trial; the canary's record stays clipped far beyond this.
MAX_STEPS = 10_000
DEFAULT_CONFIDENCE = 0.95
#: Confidence used only to *choose* the threshold on the calibration half. Stricter than the report's, it
#: prefers thresholds backed by many trials over lucky ones in the far tail that the evaluation half then
#: contradicts (in simulation it removed the audit's rare misses of the noise-halved variant). The reported
#: bound uses the evaluation half at the stated confidence, whatever was chosen here.
SELECTION_CONFIDENCE = 0.999

#: The clipping norm of every audited mechanism; scores are in units of it.
CLIP_NORM = 1.0
#: The model moves by at most this much (times noise) per step: w changes by STEP · (clipped sum + noise),
#: so the canary's residual (about CANARY_TARGET) never changes sign within MAX_STEPS steps.
STEP = 1e-3
CANARY_TARGET = -1.0e4
#: Model coordinates no record ever touches: their spread in the release is the noise scale alone, which
#: must not depend on the private data (an update divided by the private count would show here).
NOISE_COORDINATES = 1024
#: The seed the "seed-reused" variant draws its noise from, trial after trial.
REUSED_SEED = 20231205

#: Exit code of `accute-fl privacy audit` when the measured lower bound exceeds the claim.
EXIT_AUDIT_FAILED = 8


class AuditFailedError(AccuteError):
    """The measured lower bound on epsilon exceeds the accountant's claim: the mechanism leaks."""

    code = "audit_failed"
    http_status = 500
    exit_code = EXIT_AUDIT_FAILED


# --- statistics -------------------------------------------------------------------------------------


def clopper_pearson(
    successes: npt.ArrayLike, trials: npt.ArrayLike, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[FloatArray, FloatArray]:
    """Exact two-sided binomial interval (lower, upper) for k successes in n trials (vectorized).

    lower = Beta(alpha/2; k, n-k+1) (0 when k = 0), upper = Beta(1-alpha/2; k+1, n-k) (1 when k = n).
    """
    from scipy import stats

    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise InvalidInputError("Clopper-Pearson needs 0 <= successes <= trials and trials >= 1")
    alpha = 1.0 - _check_confidence(confidence)
    with np.errstate(all="ignore"):
        lower = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        upper = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)


def epsilon_lower_bound(
    true_positives: npt.ArrayLike,
    positives: int,
    false_positives: npt.ArrayLike,
    negatives: int,
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> FloatArray:
    """ε lower bound from a test's counts: max(0, ln((TPR_lo - δ)/FPR_hi), ln((1 - FPR_hi - δ)/(1 - TPR_lo))).

    A direction whose numerator is not above 0 shows nothing (0). FPR_hi and 1 - TPR_lo are never 0
    with finitely many trials, so the bound is always finite.
    """
    tpr_lo, _ = clopper_pearson(true_positives, positives, confidence)
    _, fpr_hi = clopper_pearson(false_positives, negatives, confidence)
    with np.errstate(all="ignore"):
        forward = np.where(tpr_lo > delta, np.log((tpr_lo - delta) / fpr_hi), 0.0)
        backward = np.where(1 - fpr_hi > delta, np.log((1 - fpr_hi - delta) / (1 - tpr_lo)), 0.0)
    return np.maximum(0.0, np.maximum(forward, backward))


def max_provable_epsilon(
    positives: int, negatives: int, delta: float, confidence: float = DEFAULT_CONFIDENCE
) -> float:
    """The largest bound these trial counts can show (a perfect test: TPR = 1, FPR = 0)."""
    return float(epsilon_lower_bound(positives, positives, 0, negatives, delta, confidence))


def _counts_above(sorted_scores: FloatArray, thresholds: FloatArray) -> npt.NDArray[np.int64]:
    """How many scores are strictly above each threshold."""
    return len(sorted_scores) - np.searchsorted(sorted_scores, thresholds, side="right")


def choose_threshold(
    with_canary: Sequence[float] | FloatArray,
    without_canary: Sequence[float] | FloatArray,
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float]:
    """(t, bound): the threshold (test: score > t) whose bound is largest on these (calibration) scores."""
    pos = np.sort(np.asarray(with_canary, dtype=np.float64))
    neg = np.sort(np.asarray(without_canary, dtype=np.float64))
    values = np.unique(np.concatenate([pos, neg]))
    # Midpoints between neighbouring scores: the same tests as the scores themselves, but the chosen one
    # sits halfway between the groups, not on the edge of one (which the evaluation half may cross).
    candidates = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    bounds = epsilon_lower_bound(
        _counts_above(pos, candidates), len(pos), _counts_above(neg, candidates), len(neg), delta, confidence
    )
    best = int(np.argmax(bounds))
    return float(candidates[best]), float(bounds[best])


@dataclass(frozen=True)
class AuditVerdict:
    """What every empirical audit reports (this one and ``privacy.audit_one_run``): the mechanism
    measured, the accountant's claim for it and the lower bound the attacker's test proved."""

    mechanism: str
    unit: str
    broken: str | None
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    confidence: float
    epsilon_lower_bound: float
    epsilon_claimed: float
    max_provable_epsilon: float

    @property
    def passed(self) -> bool:
        """Whether the measurement is consistent with the claim (lower bound ≤ claimed)."""
        return self.epsilon_lower_bound <= self.epsilon_claimed

    def verdict_dict(self, method: str, trials: int) -> dict[str, Any]:
        """The keys every audit prints, in the order the CLI shows them."""
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "epsilon_claimed": self.epsilon_claimed,
            "trials": trials,
            "confidence": self.confidence,
            "mechanism": self.mechanism,
            "unit": self.unit,
            "max_provable_epsilon": self.max_provable_epsilon,
            "passed": self.passed,
            "method": method,
            "broken": self.broken,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
        }


@dataclass(frozen=True)
class AuditResult(AuditVerdict):
    """What a many-trial audit measured (Clopper-Pearson bounds on the attacker's test)."""

    trials: int
    #: The statistic of the release the attacker's test used (one of STATISTICS; "-" when negated).
    statistic: str
    threshold: float
    true_positives: int
    false_positives: int
    positives: int
    negatives: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.verdict_dict("clopper-pearson", self.trials),
            "statistic": self.statistic,
            "threshold": self.threshold,
            "true_positives": self.true_positives,
            "positives": self.positives,
            "false_positives": self.false_positives,
            "negatives": self.negatives,
        }


@dataclass(frozen=True)
class Evaluation:
    """The chosen test (statistic, threshold) and its counts on the evaluation half."""

    bound: float
    #: The column of the scores the test reads, and whether it is negated (the canary lowers it).
    statistic: int
    negated: bool
    threshold: float
    true_positives: int
    positives: int
    false_positives: int
    negatives: int


def evaluate_scores(
    with_canary: Sequence[float] | Sequence[Sequence[float]] | FloatArray,
    without_canary: Sequence[float] | Sequence[Sequence[float]] | FloatArray,
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Evaluation:
    """Choose a statistic (column) and threshold on the first half of each side, count on the second.

    Scores are one row per trial, one column per statistic (a 1-D array is one statistic). Each
    statistic is tried as it is and negated (the canary may raise or lower it; the bound's formula
    assumes it raises it). Only the single test chosen on the calibration half is evaluated, so the
    choice costs no confidence.
    """
    pos = np.asarray(with_canary, dtype=np.float64)
    neg = np.asarray(without_canary, dtype=np.float64)
    pos, neg = (pos.reshape(-1, 1), neg.reshape(-1, 1)) if pos.ndim == 1 else (pos, neg)
    columns = pos.shape[1]
    pos, neg = np.hstack([pos, -pos]), np.hstack([neg, -neg])
    pos_cal, pos_eval = pos[: len(pos) // 2], pos[len(pos) // 2 :]
    neg_cal, neg_eval = neg[: len(neg) // 2], neg[len(neg) // 2 :]
    choices = [
        choose_threshold(pos_cal[:, j], neg_cal[:, j], delta, SELECTION_CONFIDENCE)
        for j in range(pos.shape[1])
    ]
    column = max(range(len(choices)), key=lambda j: choices[j][1])  # the first on ties
    threshold = choices[column][0]
    tp = int(np.sum(pos_eval[:, column] > threshold))
    fp = int(np.sum(neg_eval[:, column] > threshold))
    bound = float(epsilon_lower_bound(tp, len(pos_eval), fp, len(neg_eval), delta, confidence))
    return Evaluation(
        bound, column % columns, column >= columns, threshold, tp, len(pos_eval), fp, len(neg_eval)
    )


# --- the mechanisms ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """The attacker's view of one run, in units of the clip norm (`STATISTICS`, in order).

    `canary`: how far the update moved along the canary's direction; `noise_scale`: the root mean
    square of the coordinates no record touches (the noise's scale as released); `count`: a record
    or participant count if the variant releases one (0.0 otherwise: a constant tells nothing).
    """

    canary: float
    noise_scale: float
    count: float = 0.0

    def scores(self) -> tuple[float, float, float]:
        return (self.canary, self.noise_scale, self.count)


def _rms(values: npt.NDArray[Any]) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(values, dtype=np.float64)))))


def broken_noise_source(broken: str | None) -> Callable[[], NoiseFn | None]:
    """A factory of the noise source for one trial: None (the mechanism's own CSPRNG), or a wrong one."""
    if broken == "noise-halved":

        def halved() -> NoiseFn:
            from privacy.secure_noise import gaussian

            return lambda shape, std: gaussian(shape, std / 2)

        return halved
    if broken == "seed-reused":

        def reused() -> NoiseFn:
            generator = np.random.default_rng(REUSED_SEED)  # the same draws in every trial
            return lambda shape, std: generator.normal(0.0, std, size=shape)

        return reused
    return lambda: None


@dataclass(frozen=True)
class _Population:
    """The audited data set D (other units) plus the canary; D' = D + {canary}."""

    others: list[dict[str, Any]]
    canary: list[dict[str, Any]]
    #: Units (records, users or tenants) in D: public, it sets the expected batch size.
    units: int


def _dp_sgd_population(unit: str, seed_data: int) -> _Population:
    """Records on feature `a` for D; the canary's records only use feature `b` (weight[0, 1])."""
    rng = np.random.default_rng(seed_data)
    users = 4 if unit == "user" else 8
    per_user = 2 if unit == "user" else 1
    others = [
        {
            "user_id": str(uuid.UUID(int=u + 1)),
            "a": float(rng.uniform(0.5, 1.5)),
            "b": 0.0,
            "y": float(rng.normal()),
        }
        for u in range(users)
        for _ in range(per_user)
    ]
    canary_records = 3 if unit == "user" else 1
    canary_id = str(uuid.UUID(int=0xCA4A87))
    canary = [{"user_id": canary_id, "a": 0.0, "b": 1.0, "y": CANARY_TARGET} for _ in range(canary_records)]
    return _Population(others=others, canary=canary, units=users)


def _identity(value: float) -> float:
    return value


def _first_output_squared_error(outputs: Any, targets: Any) -> Any:
    """Per-example squared error of output 0; the other outputs feed no loss (their weights get noise only)."""
    return (outputs[:, 0] - targets) ** 2


def _first_output_mae(outputs: Any, targets: Any) -> float:
    return float((outputs[:, 0] - targets).abs().mean())


def audit_task(columns: Sequence[str] = ("a", "b"), outputs: int = 1 + NOISE_COORDINATES // 2) -> Any:
    """The audit's task: a bias-free linear model on `columns`, squared error on its first output.

    Each record's gradient is 2·(w₀·x - y)·x in row 0 of the weight, so the canary (x = (0, 1),
    y = -10⁴) always has a gradient of norm ≫ C along weight[0, 1], clipped to exactly C there, while
    no other record touches it. Rows 1.. (`NOISE_COORDINATES` weights by default) feed no loss: they
    receive the noise and nothing else.
    """
    from torch import nn

    from fl_client.tasks.features import NumericBlock, RecordEncoder, RegressionTarget
    from fl_client.tasks.spec import MetricSpec, TaskSpec, TrainingDefaults

    width = len(columns)
    return TaskSpec(
        name="privacy_audit",
        head_type="quantitative",
        contribution_type=None,
        description="Privacy audit canary task: linear regression, one canary feature per canary.",
        encoder=RecordEncoder(
            fields=(NumericBlock(tuple(columns), 1.0),), label=RegressionTarget("y", _identity)
        ),
        model_factory=lambda: nn.Sequential(nn.Linear(width, outputs, bias=False)),
        loss=_first_output_squared_error,
        metric=MetricSpec(name="mae", higher_is_better=False, fn=_first_output_mae),
        defaults=TrainingDefaults(lr=STEP, sample_rate=1.0, steps=1, clip_norm=CLIP_NORM),
    )


def dp_sgd_runner(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    *,
    unit: str = "record",
    broken: str | None = None,
    seed_data: int = 0,
    server_seed: int | None = None,
) -> Callable[[bool], Release]:
    """run(with_canary): one `fl_client.dp_training.train` call, returned as the attacker sees it.

    The update is normalised by the public expected batch size B = q·|D| (units of D) and the step is
    lr/B = STEP, so the canary coordinate moves by -STEP·(C·[canary sampled] + noise) per step.
    `server_seed` passes a seed to `train` as a server would: under DP it must be ignored.
    """
    import torch

    from fl_client.dp_training import train

    population = _dp_sgd_population(unit, seed_data)
    task = audit_task()
    start = {k: torch.zeros_like(v) for k, v in task.initial_state().items()}
    expected_batch_size = sample_rate * population.units
    noise_source = broken_noise_source(broken)
    scale = STEP * CLIP_NORM

    def run(with_canary: bool) -> Release:
        records = population.others + population.canary if with_canary else population.others
        users = {r["user_id"] for r in records} if unit == "user" else None
        result = train(
            task,
            start,
            records,
            consented_user_ids=users,
            noise_multiplier=noise_multiplier,
            clip_norm=CLIP_NORM,
            sample_rate=sample_rate,
            steps=steps,
            lr=STEP * expected_batch_size,
            seed=server_seed,
            dp=True,
            expected_batch_size=expected_batch_size,
            noise=noise_source(),
            unit=unit,
        )
        delta = result.delta["0.weight"].double().numpy()
        if broken == "count-normalised":
            # Output wrapper: the update as if divided by the private count q·n instead of B.
            private = sample_rate * (len({r["user_id"] for r in records}) if unit == "user" else len(records))
            delta = delta * (expected_batch_size / private)
        return Release(
            canary=-float(delta[0, 1]) / scale,
            noise_scale=_rms(delta[1:]) / scale,
            count=float(len(records)) if broken == "count-released" else 0.0,
        )

    return run


def central_runner(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    *,
    broken: str | None = None,
    seed_data: int = 0,
    tenants: int = 5,
    uniform: UniformFn | None = None,
) -> Callable[[bool], Release]:
    """run(with_canary): `steps` rounds of `CentralDPSum` over N tenants (with the canary tenant: N + 1).

    Each round samples every tenant independently with probability q (Poisson, CSPRNG uniforms, as
    the accountant assumes), clips and sums the sampled tenants' updates, adds N(0, (zC)²) and divides
    by the public expected number of participants q·N — never by the observed count. Other tenants'
    updates lie along coordinate 0; the canary tenant's along coordinate 1 (norm ≫ C, clipped to C);
    no tenant touches the remaining `NOISE_COORDINATES`.
    """
    from aggregation.central_dp import CentralDPSum
    from aggregation.spec import ModelSpec
    from privacy.secure_noise import gaussian, secure_uniform

    size = 2 + NOISE_COORDINATES
    rng = np.random.default_rng(seed_data)
    others = []
    for _ in range(tenants):
        update = np.zeros(size, dtype=np.float32)
        update[0] = rng.uniform(-2.0, 2.0)
        others.append(update)
    canary = np.zeros(size, dtype=np.float32)
    canary[1] = 100.0
    spec = ModelSpec.from_arrays({"w": others[0]})
    denominator = sample_rate * tenants
    noise_source = broken_noise_source(broken)
    draw = uniform or secure_uniform
    scale = CLIP_NORM / denominator

    def run(with_canary: bool) -> Release:
        updates = [*others, canary] if with_canary else others
        noise = noise_source() or gaussian
        model = np.zeros(size)
        count = 0
        for _ in range(steps):
            dp = CentralDPSum(spec, clipping_norm=CLIP_NORM, noise_multiplier=noise_multiplier, noise=noise)
            for update, u in zip(updates, draw(len(updates)), strict=True):
                if u < sample_rate:
                    dp.add({"w": update})
            count += dp.count
            if broken == "count-normalised":
                # The project's own default: divide by the number of updates added (issue 11, row 4).
                released = dp.result() if dp.count else dp.result(denominator=1.0)
            else:
                released = dp.result(denominator=denominator)
            model += released["w"]
        return Release(
            canary=float(model[1]) / scale,
            noise_scale=_rms(model[2:]) / scale,
            count=float(count) if broken == "count-released" else 0.0,
        )

    return run


# --- the audit --------------------------------------------------------------------------------------


def _check_confidence(value: float) -> float:
    if not (math.isfinite(value) and 0.5 <= value < 1.0):
        raise InvalidInputError(f"confidence {value} must be in [0.5, 1); e.g. 0.95")
    return float(value)


def check_audit_params(
    mechanism: str, unit: str | None, noise_multiplier: float, sample_rate: float, steps: int, trials: int
) -> str:
    """Validate before any work; returns the unit (the mechanism's default when None)."""
    if mechanism not in MECHANISMS:
        raise InvalidInputError(f"mechanism {mechanism!r} is unknown; use one of: {', '.join(MECHANISMS)}")
    chosen = unit or UNITS[mechanism][0]
    if chosen not in UNITS[mechanism]:
        raise InvalidInputError(
            f"unit {chosen!r} does not apply to {mechanism}; use one of: {', '.join(UNITS[mechanism])}"
        )
    check_noise_multiplier(noise_multiplier)
    check_sample_rate(sample_rate)
    if isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise InvalidInputError(f"steps {steps} must be between 1 and {MAX_STEPS}")
    if isinstance(trials, bool) or not MIN_TRIALS <= trials <= MAX_TRIALS:
        raise InvalidInputError(f"trials {trials} must be between {MIN_TRIALS} and {MAX_TRIALS}; e.g. 2000")
    return chosen


def run_audit(
    mechanism: str = "dp-sgd",
    *,
    noise_multiplier: float = 1.0,
    sample_rate: float = 1.0,
    steps: int = 1,
    trials: int = DEFAULT_TRIALS,
    delta: float = 1e-5,
    unit: str | None = None,
    broken: str | None = None,
    seed_data: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    server_seed: int | None = None,
) -> AuditResult:
    """Run `trials` trials (half with the canary, half without, interleaved) and bound epsilon.

    `epsilon_claimed` is the RDP accountant's ε for the same (z, q, T, δ): what the ledger charges.
    """
    from privacy.accounting import mechanism_epsilon

    chosen_unit = check_audit_params(mechanism, unit, noise_multiplier, sample_rate, steps, trials)
    check_delta(delta)
    _check_confidence(confidence)
    if broken is not None and broken not in BROKEN:
        raise InvalidInputError(f"broken variant {broken!r} is unknown; use one of: {', '.join(BROKEN)}")
    if mechanism == "dp-sgd":
        run = dp_sgd_runner(
            noise_multiplier,
            sample_rate,
            steps,
            unit=chosen_unit,
            broken=broken,
            seed_data=seed_data,
            server_seed=server_seed,
        )
    else:
        run = central_runner(noise_multiplier, sample_rate, steps, broken=broken, seed_data=seed_data)
    positives = trials // 2
    with_canary: list[tuple[float, float, float]] = []
    without_canary: list[tuple[float, float, float]] = []
    for i in range(trials):
        if i % 2 == 0 and len(with_canary) < positives:
            with_canary.append(run(True).scores())
        else:
            without_canary.append(run(False).scores())
    found = evaluate_scores(with_canary, without_canary, delta, confidence)
    return AuditResult(
        mechanism=mechanism,
        unit=chosen_unit,
        broken=broken,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        trials=trials,
        confidence=confidence,
        epsilon_lower_bound=found.bound,
        epsilon_claimed=mechanism_epsilon(noise_multiplier, sample_rate, steps, delta, "rdp"),
        max_provable_epsilon=max_provable_epsilon(found.positives, found.negatives, delta, confidence),
        statistic=("-" if found.negated else "") + STATISTICS[found.statistic],
        threshold=found.threshold,
        true_positives=found.true_positives,
        false_positives=found.false_positives,
        positives=found.positives,
        negatives=found.negatives,
    )
