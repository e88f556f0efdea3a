"""Federated runs for people: what ran, who took part, who sat out and why, and what it cost in ε.

Reads only, and imports neither Flower nor torch, so ``accute-fl runs ...`` starts at once.
A run still marked ``running`` whose last write is older than ``stale_after_s`` (twice its round
timeout, at least five minutes) is shown as ``abandoned``: its server died without completing it.
The same run name resumes it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schema.errors import NotFoundError
from schema.models import FlNodeBinding, FlRoundOutcome, FlRoundSummary, FlRun, Organization
from schema.timeutil import as_utc, iso, utcnow

#: A running run is abandoned after this many seconds without a write, at the least.
MIN_STALE_AFTER_S = 300.0


@dataclass(frozen=True)
class RunRow:
    name: str
    task: str
    status: str
    rounds: int
    last_completed_round: int
    tenants: int
    created_at: str | None
    updated_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TenantInRun:
    tenant: str
    organization_id: str
    organization: str
    rounds_sampled: int = 0
    rounds_accepted: int = 0
    #: Rounds sat out or failed, with the recorded reason: {round: "status: reason"}.
    not_accepted: dict[int, str] = field(default_factory=dict)
    #: The tenant's lifetime ε on its ledger after this run's last charge (None: nothing charged).
    epsilon_after: float | None = None


def _stale_after(config: dict[str, Any]) -> float:
    timeout = float(config.get("round_timeout_s", 600.0) or 600.0)
    return max(2.0 * timeout, MIN_STALE_AFTER_S)


def _status(run: FlRun, now: datetime) -> str:
    if run.status != "running":
        return run.status
    last = run.updated_at or run.created_at
    if last is None:
        return run.status
    idle = as_utc(now) - as_utc(last)
    return "abandoned" if idle > timedelta(seconds=_stale_after(dict(run.config))) else "running"


def _row(run: FlRun, tenants: int, now: datetime) -> RunRow:
    return RunRow(
        name=run.name,
        task=run.task,
        status=_status(run, now),
        rounds=int(dict(run.config).get("rounds", 0)),
        last_completed_round=run.last_completed_round,
        tenants=tenants,
        created_at=iso(run.created_at),
        updated_at=iso(run.updated_at),
    )


def list_runs(session: Session, *, now: datetime | None = None) -> list[RunRow]:
    """Every run, newest first, with stale ``running`` runs shown as ``abandoned``."""
    now = now or utcnow()
    counts = select(FlNodeBinding.run_id, func.count()).group_by(FlNodeBinding.run_id)
    bound = {row[0]: int(row[1]) for row in session.execute(counts)}
    runs = session.scalars(select(FlRun).order_by(FlRun.created_at.desc(), FlRun.name))
    return [_row(run, int(bound.get(run.id, 0)), now) for run in runs]


def run_detail(session: Session, name: str, *, now: datetime | None = None) -> dict[str, Any]:
    """One run: its rounds (metric, statuses per tenant with reasons) and its tenants (ε, sat-out rounds)."""
    run = session.scalar(select(FlRun).where(FlRun.name == name))
    if run is None:
        raise NotFoundError(f"run '{name[:100]}' does not exist; see `accute-fl runs list`")
    now = now or utcnow()
    names = _organization_names(session, run.id)
    tenants: dict[str, TenantInRun] = {}
    for binding in session.scalars(select(FlNodeBinding).where(FlNodeBinding.run_id == run.id)):
        tenants[binding.tenant] = TenantInRun(
            binding.tenant, str(binding.organization_id), names.get(binding.organization_id, "")
        )
    rounds: dict[int, dict[str, Any]] = defaultdict(lambda: {"tenants": {}})
    outcomes = session.scalars(
        select(FlRoundOutcome)
        .where(FlRoundOutcome.run_id == run.id)
        .order_by(FlRoundOutcome.aggregation_round, FlRoundOutcome.tenant, FlRoundOutcome.created_at)
    )
    for outcome in outcomes:
        entry = tenants.setdefault(
            outcome.tenant,
            TenantInRun(outcome.tenant, str(outcome.organization_id), names.get(outcome.organization_id, "")),
        )
        rounds[outcome.aggregation_round]["tenants"][outcome.tenant] = {
            "status": outcome.status,
            "reason": outcome.reason,
            "sampled": outcome.sampled,
            "epsilon_after": outcome.epsilon_after,
        }
        if outcome.sampled:
            entry.rounds_sampled += 1
        if outcome.status == "accepted":
            entry.rounds_accepted += 1
        else:
            entry.not_accepted[outcome.aggregation_round] = (
                f"{outcome.status}: {outcome.reason}" if outcome.reason else outcome.status
            )
        if outcome.epsilon_after is not None:
            entry.epsilon_after = max(entry.epsilon_after or 0.0, outcome.epsilon_after)
    for summary in session.scalars(select(FlRoundSummary).where(FlRoundSummary.run_id == run.id)):
        rounds[summary.aggregation_round] |= {
            "metric_name": summary.metric_name,
            "metric": summary.metric_value,
            "accepted": summary.accepted,
            "committed": True,
        }
    return {
        "run": _row(run, len(names), now).as_dict(),
        "rounds": [{"round": number, **rounds[number]} for number in sorted(rounds)],
        "tenants": [asdict(t) for t in sorted(tenants.values(), key=lambda t: t.tenant)],
    }


def _organization_names(session: Session, run_id: uuid.UUID) -> dict[uuid.UUID, str]:
    query = (
        select(Organization.id, Organization.name)
        .join(FlNodeBinding, FlNodeBinding.organization_id == Organization.id)
        .where(FlNodeBinding.run_id == run_id)
    )
    return dict(session.execute(query).all())
