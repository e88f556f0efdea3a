"""Anomaly detection in the federation: repeated rejections, outlier updates, fast budget burn.

``FederationWatch`` is the ``Governor``'s detector (one per run); it is told what the governor
decided and writes ``security_anomalies`` rows in the governor's own transaction
(``schema.security_anomalies.record``, deduplicated per organization and rule), so a finding
commits or rolls back with the verdict that caused it. Rules (``schema.anomaly_policy``):

- ``fl_repeated_rejections`` (``access_pattern``): a node whose updates were rejected as invalid
  in ``threshold`` of the last ``window_s`` rounds (``window_s`` counts rounds here).
- ``fl_update_outlier`` (``behavioral_mismatch``, blocks by default): an update the validator
  rejected as an outlier (norm above the bound, a weight the tenant cannot hold), and
  ``fl_aggregator_outlier`` (recorded only by default): an accepted update the robust aggregator
  found far from the round's coordinate-wise median; both are the existing
  ``fl_round_outcomes.outlier`` flag.
- ``fl_budget_burn`` (``volume_spike``): a round's epsilon increment above ``threshold`` x the
  median of the tenant's earlier increments in this run (``min_history`` of them at least).

With ``auto_block`` (the default for repeated rejections and validator outliers) the row blocks ``org:<id>`` for ``block_s``;
``blocked`` is read at admission, and a blocked tenant sits the round out (``rejected_invalid``,
the reason names the anomaly) until the block ends or an admin resolves the row
(``accute-fl security resolve``).
"""

from __future__ import annotations

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
    ) -> None:
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
                block_s=rule.block_s if rule.auto_block else None,
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
    ) -> None:
        """One verdict of the governor (or, ``by_aggregator``, the robust aggregator's flag at commit)."""
        evidence = {"run": run_name, "round": server_round, "reason": (reason or "")[:300]}
        if outlier:
            detector = "fl_aggregator_outlier" if by_aggregator else "fl_update_outlier"
            self._record(session, detector, organization_id, evidence)
        if not rejected_invalid:
            return
        rule = self.policy.rule("fl_repeated_rejections")
        window = max(int(rule.window_s), 1)
        rounds = self._rejections.setdefault(organization_id, deque(maxlen=window))
        if not rounds or rounds[-1] != server_round:
            rounds.append(server_round)
        count = repeated(rounds, server_round, window)
        if count >= rule.threshold:
            self._record(
                session,
                "fl_repeated_rejections",
                organization_id,
                {**evidence, "rejected_rounds": list(rounds), "window_rounds": window},
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
