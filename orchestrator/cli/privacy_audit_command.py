"""`accute-fl privacy audit`: measure a lower bound on epsilon by running our own mechanism.

Exit codes: 0 when the measured lower bound is at most the accountant's claim, 8 (``audit failed``)
when it exceeds it — the mechanism releases more than the ledger charges, a release bug — and 2 for
bad input. The result is printed in both cases, before the one-line error.
"""

from __future__ import annotations

import math

import typer

from orchestrator.cli.output import emit
from privacy import audit as privacy_audit
from privacy import audit_one_run

COLUMNS = ("field", "value")


def audit(
    mechanism: str = typer.Option(
        "dp-sgd", "--mechanism", help="dp-sgd (a node's training) or central (the server's noisy sum)."
    ),
    noise_multiplier: float = typer.Option(1.0, "--noise-multiplier", help="Noise multiplier z > 0."),
    sample_rate: float = typer.Option(
        1.0, "--sample-rate", help="Poisson sampling rate q in (0, 1] (records/users, or tenants)."
    ),
    steps: int = typer.Option(
        1, "--steps", help=f"Steps (dp-sgd) or rounds (central), 1 to {privacy_audit.MAX_STEPS}."
    ),
    trials: int = typer.Option(
        privacy_audit.DEFAULT_TRIALS,
        "--trials",
        help=f"Runs of the mechanism, half with the canary ({privacy_audit.MIN_TRIALS} to {privacy_audit.MAX_TRIALS}).",
    ),
    delta: float = typer.Option(
        1e-5, "--delta", help="Delta in (0, 1) at which epsilon is claimed and bounded."
    ),
    unit: str | None = typer.Option(
        None, "--unit", help="Unit of privacy: record or user (dp-sgd, default record); tenant (central)."
    ),
    seed_data: int = typer.Option(
        0, "--seed-data", help="Seed of the audit's synthetic data set (never of the noise)."
    ),
    one_run: bool = typer.Option(
        False,
        "--one-run",
        help="Audit in one run with coin-flipped canaries (Steinke et al. 2023): quick, weaker; ignores --trials.",
    ),
    canaries: int = typer.Option(
        audit_one_run.DEFAULT_CANARIES, "--canaries", help="Canaries of a --one-run audit (20 to 10000)."
    ),
    broken: str | None = typer.Option(
        None, "--broken", hidden=True, help="Audit a deliberately broken variant (tests, demonstrations)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Empirical privacy audit: a 95 % lower bound on epsilon for our own mechanism, against its claim.

    Runs the mechanism on neighbouring data sets (with and without one canary unit), bounds the best
    test's true and false positive rates with Clopper-Pearson intervals and reports
    epsilon_lower_bound next to epsilon_claimed (the RDP accountant's value for the same z, q, T,
    delta). Exits 8 when the lower bound exceeds the claim.
    """
    result: privacy_audit.AuditResult | audit_one_run.OneRunResult
    if one_run:
        result = audit_one_run.one_run_audit(
            mechanism,
            unit=unit,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            canaries=canaries,
            delta=delta,
            broken=broken,
            seed_data=seed_data,
        )
    else:
        result = privacy_audit.run_audit(
            mechanism,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            trials=trials,
            delta=delta,
            unit=unit,
            broken=broken,
            seed_data=seed_data,
        )
    record = result.as_dict()
    if as_json:
        emit(record, True, "Privacy audit", COLUMNS)
    else:
        rows = [{"field": k, "value": f"{v:.4g}" if isinstance(v, float) else v} for k, v in record.items()]
        emit(rows, False, "Privacy audit", COLUMNS)
    if not result.passed:
        claimed = "inf" if math.isinf(result.epsilon_claimed) else f"{result.epsilon_claimed:.3g}"
        raise privacy_audit.AuditFailedError(
            f"audit failed: measured epsilon >= {result.epsilon_lower_bound:.3g} ({result.confidence:.0%} confidence) exceeds "
            f"the claimed {claimed}; this mechanism releases more than the ledger charges"
        )
