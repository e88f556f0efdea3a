"""Federated runs for the admin console: runs, one run's rounds, contributions, as view models.

The run rows and the per-round statuses are ``fl_server.runs``' own (the functions behind
``accute-fl runs list|show``). Scoped to an organization, a caller sees only the runs its tenant
took part in, and in them only its own tenant's statuses, reasons and epsilon (the round's global
metric is shared by every participant); another organization's run is reported missing, exactly
like an unknown one.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fl_server import runs
from schema.errors import NotFoundError
from schema.models import FederatedLearningContribution, FlNodeBinding, FlRoundOutcome, FlRun
from schema.pagination import Page, check_window, page_of
from schema.timeutil import iso
from schema.validation import parse_uuid


class RunView(BaseModel):
    """One row of ``runs list``."""

    name: str
    task: str
    status: str
    rounds: int
    last_completed_round: int
    tenants: int
    created_at: str | None
    updated_at: str | None


class TenantRoundStatus(BaseModel):
    """A tenant's outcome in one round: status, the recorded reason, and its epsilon after it."""

    status: str
    reason: str | None
    sampled: bool
    epsilon_after: float | None


class RoundView(BaseModel):
    """One round: the global metric (once committed) and each participating tenant's outcome."""

    round: int
    metric_name: str | None = None
    metric: float | None = None
    accepted: int | None = None
    committed: bool = False
    tenants: dict[str, TenantRoundStatus]


class TenantInRunView(BaseModel):
    """A tenant over the whole run: rounds sampled and accepted, sat-out reasons, epsilon after."""

    tenant: str
    organization_id: str
    organization: str
    rounds_sampled: int
    rounds_accepted: int
    not_accepted: dict[int, str]
    epsilon_after: float | None


class RunDetail(BaseModel):
    run: RunView
    rounds: list[RoundView]
    tenants: list[TenantInRunView]


class ContributionView(BaseModel):
    """A ``federated_learning_contributions`` row, with the run it belongs to (via its round outcome)."""

    id: str
    organization_id: str
    model_type: str
    run: str | None
    aggregation_round: int
    contribution_type: str | None
    status: str | None
    contribution_weight: str
    privacy_budget_consumed: str
    gradient_checksum: str
    created_at: str | None


def _org_runs(session: Session, organization_id: uuid.UUID) -> set[uuid.UUID]:
    """Ids of the runs the organization's tenant took part in (bound a node, or has an outcome)."""
    bound = select(FlNodeBinding.run_id).where(FlNodeBinding.organization_id == organization_id)
    seen = select(FlRoundOutcome.run_id).where(FlRoundOutcome.organization_id == organization_id)
    return set(session.scalars(bound.union(seen)))


def list_runs(
    session: Session,
    *,
    organization_id: str | uuid.UUID | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[RunView]:
    """Runs newest first (``runs list``), optionally only those an organization took part in."""
    check_window(limit, offset)
    rows = runs.list_runs(session)
    if organization_id is not None:
        org = parse_uuid(organization_id, "organization id")
        allowed = set(session.scalars(select(FlRun.name).where(FlRun.id.in_(_org_runs(session, org)))))
        rows = [r for r in rows if r.name in allowed]
    if status is not None:
        rows = [r for r in rows if r.status == status]
    page = page_of(rows, limit, offset)
    return Page[RunView](
        items=[RunView(**r.as_dict()) for r in page.items], total=page.total, limit=limit, offset=offset
    )


def _find_run(session: Session, run: str) -> FlRun:
    """A run by name, or by id."""
    row = session.scalar(select(FlRun).where(FlRun.name == run))
    if row is None:
        try:
            row = session.get(FlRun, uuid.UUID(run))
        except ValueError:
            row = None
    if row is None:
        raise NotFoundError(f"run '{run[:100]}' does not exist; see `accute-fl runs list`")
    return row


def run_detail(session: Session, run: str, *, organization_id: str | uuid.UUID | None = None) -> RunDetail:
    """One run (``runs show``): its rounds with per-tenant statuses, reasons and epsilon after the
    round, and its tenants; scoped to an organization, only that organization's tenants."""
    found = _find_run(session, run)
    if organization_id is not None:
        org = parse_uuid(organization_id, "organization id")
        if found.id not in _org_runs(session, org):
            raise NotFoundError(f"run '{run[:100]}' does not exist; see `accute-fl runs list`")
    detail: dict[str, Any] = runs.run_detail(session, found.name)
    if organization_id is not None:
        mine = {t["tenant"] for t in detail["tenants"] if t["organization_id"] == str(org)}
        detail["tenants"] = [t for t in detail["tenants"] if t["tenant"] in mine]
        hide_count = _tenant_is_the_unit(found)
        for entry in detail["rounds"]:
            entry["tenants"] = {k: v for k, v in entry["tenants"].items() if k in mine}
            if hide_count:
                entry["accepted"] = None
    return RunDetail.model_validate(detail)


def _tenant_is_the_unit(run: FlRun) -> bool:
    """Central DP protects a tenant's participation: another tenant may not read a round's count of
    contributors (with its own status it would tell how many others took part). Platform admins, the
    curator's operators, still see it."""
    return str((run.config or {}).get("dp", "")) in ("central", "both")


def contributions(
    session: Session,
    *,
    run: str | None = None,
    organization_id: str | uuid.UUID | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[ContributionView]:
    """Contributions of a run and/or an organization, newest first, one page with the total."""
    limit, offset = check_window(limit, offset)
    c = FederatedLearningContribution
    query = select(c, FlRun.name).outerjoin(FlRoundOutcome, FlRoundOutcome.contribution_id == c.id)
    query = query.outerjoin(FlRun, FlRun.id == FlRoundOutcome.run_id)
    if run is not None:
        query = query.where(FlRoundOutcome.run_id == _find_run(session, run).id)
    if organization_id is not None:
        query = query.where(c.organization_id == parse_uuid(organization_id, "organization id"))
    if status is not None:
        query = query.where(c.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(query.order_by(c.created_at.desc(), c.id).limit(limit).offset(offset))
    return Page[ContributionView](
        items=[_contribution(row, name) for row, name in rows], total=total, limit=limit, offset=offset
    )


def _decimal(value: Decimal | None) -> str:
    return "0" if value is None else format(value, "f")


def _contribution(row: FederatedLearningContribution, run: str | None) -> ContributionView:
    return ContributionView(
        id=str(row.id),
        organization_id=str(row.organization_id),
        model_type=row.model_type,
        run=run,
        aggregation_round=row.aggregation_round,
        contribution_type=row.contribution_type,
        status=row.status,
        contribution_weight=_decimal(row.contribution_weight),
        privacy_budget_consumed=_decimal(row.privacy_budget_consumed),
        gradient_checksum=row.gradient_checksum,
        created_at=iso(row.created_at),
    )


# --- aggregates for /metrics -------------------------------------------------------------------


def contribution_counts(session: Session) -> list[tuple[str, str, int]]:
    """(model type, status, contributions) over every organization, sorted."""
    c = FederatedLearningContribution
    query = (
        select(c.model_type, c.status, func.count())
        .group_by(c.model_type, c.status)
        .order_by(c.model_type, c.status)
    )
    return [(model_type, status or "pending", int(n)) for model_type, status, n in session.execute(query)]


def round_durations(session: Session) -> list[tuple[str, float]]:
    """(model type, seconds) of every committed round: from the previous round's commit (the run's
    start for the first) to this round's commit."""
    from schema.models import FlRoundSummary
    from schema.timeutil import as_utc

    query = (
        select(FlRun.id, FlRun.task, FlRun.created_at, FlRoundSummary.created_at)
        .join(FlRoundSummary, FlRoundSummary.run_id == FlRun.id)
        .order_by(FlRun.id, FlRoundSummary.aggregation_round)
    )
    durations: list[tuple[str, float]] = []
    previous: tuple[uuid.UUID, Any] | None = None
    for run_id, task, started, committed in session.execute(query):
        if committed is None:
            continue
        since = previous[1] if previous is not None and previous[0] == run_id else started
        if since is not None:
            durations.append((task, max(0.0, (as_utc(committed) - as_utc(since)).total_seconds())))
        previous = (run_id, committed)
    return durations
