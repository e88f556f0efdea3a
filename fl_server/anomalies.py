"""Anomaly detection in the federation: repeated rejections, outlier updates, fast budget burn.

``FederationWatch`` is the ``Governor``'s detector (one per run); it is told what the governor
decided and writes ``security_anomalies`` rows in the governor's own transaction
(``schema.security_anomalies.record``, deduplicated per organization and rule), so a finding
commits or rolls back with the verdict that caused it. Rules (``schema.anomaly_policy``):

- ``fl_repeated_rejections`` (``access_pattern``): a node whose updates were rejected as invalid
  in ``threshold`` of the last ``window_s`` rounds (``window_s`` counts rounds here).
- ``fl_update_outlier`` (``behavioral_mismatch``): an update the validator rejected as an
  outlier (norm above the bound, a weight the tenant cannot hold) is always recorded; it blocks
  (by default) only when it is far beyond its bound (norm or weight >= ``ratio`` x the bound) or
  when it is the ``threshold``-th outlier of the tenant within the last ``window_s`` rounds
  (``window_s`` counts rounds here; ``threshold`` <= 1 blocks on every outlier). One honest
  outlier (a DP node's noise in its 10^-6 tail, unusual non-IID data) is not locked out for a
  day; a boosted update is far beyond the bound at once, and a tenant that stays just above it
  is blocked at its second outlier (and by ``fl_repeated_rejections`` at its third rejection); and
  ``fl_aggregator_outlier`` (recorded only by default): an accepted update the robust aggregator
  found far from the round's coordinate-wise median; both are the existing
  ``fl_round_outcomes.outlier`` flag.
- ``fl_budget_burn`` (``volume_spike``): a round's epsilon increment above ``threshold`` x the
  median of the tenant's earlier increments in this run (``min_history`` of them at least).

With ``auto_block`` (the default for repeated rejections and validator outliers, within their
triggers above) the row blocks ``org:<id>`` for ``block_s``;
``blocked`` is read at admission, and a blocked tenant sits the round out (``rejected_invalid``,
the reason names the anomaly) until the block ends or an admin resolves the row
(``accute-fl security resolve``).
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections import deque
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from schema import security_anomalies
from schema.anomaly_policy import AnomalyPolicy
from schema.security_anomalies import Finding
from schema.timeutil import utcnow

#: Increments remembered per tenant for the burn-rate rule.
BURN_HISTORY = 50


def burn_ratio(history: list[float], increment: float) -> float | None:
    """``increment`` over the median of ``history`` (None without a positive median)."""
    if not history:
        return None
    mid = statistics.median(history)
    return increment / mid if mid > 0 else None


def repeated(rounds: deque[int], server_round: int, window: int) -> int:
    """How many of ``rounds`` fall within the last ``window`` rounds up to ``server_round``."""
    return sum(1 for r in rounds if server_round - r < window)


class FederationWatch:
    def __init__(self, policy: AnomalyPolicy, dedup_window_s: int = 3600) -> None:
        self.policy = policy
        self.dedup_window_s = dedup_window_s
        self._rejections: dict[uuid.UUID, deque[int]] = {}
        self._outliers: dict[uuid.UUID, deque[int]] = {}
        self._increments: dict[uuid.UUID, list[float]] = {}

    def blocking_types(self) -> tuple[str, ...]:
        names = ("fl_repeated_rejections", "fl_update_outlier", "fl_aggregator_outlier", "fl_budget_burn")
        return tuple({self.policy.rule(n).anomaly_type for n in names if self.policy.rule(n).auto_block})

    def blocked(self, session: Session, organizations: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Organization -> the reason it may not take part now (an open auto-blocked anomaly)."""
        types = self.blocking_types()
        if not types:
            return {}
        found = security_anomalies.blocking(session, organizations, types)
        return {
            org: (
                f"security: {row.anomaly_type} anomaly {row.id} blocks this tenant until "
                f"{row.details.get('blocked_until')}; an admin may resolve it (accute-fl security resolve)"
            )
            for org, row in found.items()
        }

    def _record(
        self,
        session: Session,
        detector: str,
        organization_id: uuid.UUID,
        evidence: dict[str, Any],
        at: datetime | None = None,
        *,
        block: bool = True,
    ) -> None:
        """Write the finding; it blocks when the rule auto-blocks and ``block`` (the trigger fired)."""
        rule = self.policy.rule(detector)
        security_anomalies.record(
            session,
            Finding(
                detector=detector,
                anomaly_type=rule.anomaly_type,
                severity=rule.severity,
                subject=f"org:{organization_id}",
                organization_id=organization_id,
                evidence=evidence,
                confidence=1.0,
                block_s=rule.block_s if rule.auto_block and block else None,
                at=at or utcnow(),
                window_s=self.dedup_window_s,
            ),
        )

    def judged(
        self,
        session: Session,
        organization_id: uuid.UUID,
        run_name: str,
        server_round: int,
        *,
        rejected_invalid: bool,
        outlier: bool,
        reason: str | None,
        by_aggregator: bool = False,
        excess: float | None = None,
    ) -> None:
        """One verdict of the governor (or, ``by_aggregator``, the robust aggregator's flag at commit).

        ``excess``: a validator outlier's norm / bound (or weight / maximum), when known."""
        evidence = {"run": run_name, "round": server_round, "reason": (reason or "")[:300]}
        if outlier and by_aggregator:
            self._record(session, "fl_aggregator_outlier", organization_id, evidence)
        elif outlier:
            self._update_outlier(session, organization_id, server_round, evidence, excess)
        if not rejected_invalid:
            return
        rule = self.policy.rule("fl_repeated_rejections")
        rounds, window, count = _note_round(self._rejections, organization_id, server_round, rule.window_s)
        if count >= rule.threshold:
            self._record(
                session,
                "fl_repeated_rejections",
                organization_id,
                {**evidence, "rejected_rounds": list(rounds), "window_rounds": window},
            )

    def _update_outlier(
        self,
        session: Session,
        organization_id: uuid.UUID,
        server_round: int,
        evidence: dict[str, Any],
        excess: float | None,
    ) -> None:
        """Record a validator outlier; block only if far beyond its bound or repeated in the window."""
        rule = self.policy.rule("fl_update_outlier")
        rounds, window, count = _note_round(self._outliers, organization_id, server_round, rule.window_s)
        far = excess is not None and excess >= rule.ratio
        details = {**evidence, "outlier_rounds": list(rounds), "window_rounds": window}
        if excess is not None:
            details["excess"] = round(excess, 3) if math.isfinite(excess) else "inf"
        self._record(
            session,
            "fl_update_outlier",
            organization_id,
            details,
            block=far or count >= max(rule.threshold, 1),
        )

    def charged(
        self, session: Session, organization_id: uuid.UUID, run_name: str, server_round: int, increment: float
    ) -> None:
        """A round's ledger charge for the tenant: compare with its earlier increments."""
        rule = self.policy.rule("fl_budget_burn")
        history = self._increments.setdefault(organization_id, [])
        ratio = burn_ratio(history, increment) if len(history) >= rule.min_history else None
        history.append(increment)
        if len(history) > BURN_HISTORY:
            del history[0]
        if ratio is not None and ratio > rule.threshold:
            self._record(
                session,
                "fl_budget_burn",
                organization_id,
                {
                    "run": run_name,
                    "round": server_round,
                    "epsilon_increment": increment,
                    "median_increment": statistics.median(history[:-1]),
                    "ratio": round(ratio, 3),
                },
            )


def _note_round(
    history: dict[uuid.UUID, deque[int]], organization_id: uuid.UUID, server_round: int, window_s: float
) -> tuple[deque[int], int, int]:
    """Note a tenant's event in ``server_round``; its rounds, the window (rounds) and the count in it."""
    window = max(int(window_s), 1)
    rounds = history.setdefault(organization_id, deque(maxlen=window))
    if not rounds or rounds[-1] != server_round:
        rounds.append(server_round)
    return rounds, window, repeated(rounds, server_round, window)
