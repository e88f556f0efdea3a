"""Registry versions for the admin console: checksum, status, metric and lineage, as view models.

Lineage comes from ``fl_published_models`` (the run and round a version was published from, and
the metric the publish gate compared) and ``fl_round_outcomes`` (the organizations whose updates
were accepted in that run up to that round: the weights depend on every round before).
Scoped to one organization, a caller sees every version but, among the contributors, only
whether its own organization is one (other tenants' participation is theirs).
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schema.models import FlPublishedModel, FlRoundOutcome, FlRun, VamnModelRegistry
from schema.pagination import Page, check_window
from schema.timeutil import iso
from schema.validation import one_of, parse_uuid
from schema.vocab import VAMN_HEAD_TYPES


class Lineage(BaseModel):
    run: str
    model_type: str
    aggregation_round: int
    metric_name: str
    metric_value: float | None
    higher_is_better: bool
    contributing_organizations: list[str]


class RegistryVersion(BaseModel):
    id: str
    model_name: str
    model_version: str
    head_type: str
    weights_checksum: str
    is_active: bool
    deployment_status: str | None
    created_at: str | None
    lineage: Lineage | None


def list_versions(
    session: Session,
    *,
    head_type: str | None = None,
    status: str | None = None,
    organization_id: str | uuid.UUID | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[RegistryVersion]:
    """Versions by head, newest first, each with its lineage; one page with the total."""
    limit, offset = check_window(limit, offset)
    query = select(VamnModelRegistry)
    if head_type is not None:
        query = query.where(VamnModelRegistry.head_type == one_of(head_type, VAMN_HEAD_TYPES, "head type"))
    if status is not None:
        query = query.where(VamnModelRegistry.deployment_status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(
        session.scalars(
            query.order_by(
                VamnModelRegistry.head_type, VamnModelRegistry.created_at.desc(), VamnModelRegistry.id
            )
            .limit(limit)
            .offset(offset)
        )
    )
    scope = None if organization_id is None else parse_uuid(organization_id, "organization id")
    return Page[RegistryVersion](
        items=[version_view(session, row, scope) for row in rows], total=total, limit=limit, offset=offset
    )


def version_view(
    session: Session, row: VamnModelRegistry, organization_id: uuid.UUID | None = None
) -> RegistryVersion:
    return RegistryVersion(
        id=str(row.id),
        model_name=row.model_name,
        model_version=row.model_version,
        head_type=row.head_type,
        weights_checksum=row.weights_checksum,
        is_active=bool(row.is_active),
        deployment_status=row.deployment_status,
        created_at=iso(row.created_at),
        lineage=_lineage(session, row.id, organization_id),
    )


def _lineage(session: Session, registry_id: uuid.UUID, organization_id: uuid.UUID | None) -> Lineage | None:
    found = session.execute(
        select(FlPublishedModel, FlRun.name, FlRun.task)
        .join(FlRun, FlRun.id == FlPublishedModel.run_id)
        .where(FlPublishedModel.registry_id == registry_id)
    ).first()
    if found is None:
        return None
    published, run_name, task = found
    contributors = select(FlRoundOutcome.organization_id).where(
        FlRoundOutcome.run_id == published.run_id,
        FlRoundOutcome.aggregation_round <= published.aggregation_round,
        FlRoundOutcome.status == "accepted",
    )
    if organization_id is not None:
        contributors = contributors.where(FlRoundOutcome.organization_id == organization_id)
    organizations = sorted({str(o) for o in session.scalars(contributors.distinct())})
    return Lineage(
        run=run_name,
        model_type=task,
        aggregation_round=published.aggregation_round,
        metric_name=published.metric_name,
        metric_value=published.metric_value,
        higher_is_better=published.higher_is_better,
        contributing_organizations=organizations,
    )
