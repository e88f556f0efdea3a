"""Consents and data subject requests for the admin console, as view models.

Counts of current consents per type, the consent snapshots each round trained on, requests with
their deadlines and ``overdue`` (open past the deadline), and processing a request exactly as
``accute-fl dsr process`` does (``process_and_compact``, which the CLI calls too).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, case, func, select
from sqlalchemy.orm import Session

from consent_gate import dsr, erasure, scope
from schema.db import transaction
from schema.models import ConsentSnapshot, ConsentSnapshotUse, UserConsent
from schema.pagination import Page, check_window, page_of
from schema.personal_data import PersonalDataVault
from schema.timeutil import iso
from schema.validation import parse_uuid


class ConsentTypeCount(BaseModel):
    consent_type: str
    given: int
    withdrawn: int


class ConsentCounts(BaseModel):
    """An organization's users' current consents, per consent type (sorted by type)."""

    organization_id: str
    users_with_consents: int
    counts: list[ConsentTypeCount]


class SnapshotUseView(BaseModel):
    """A round that trained on a consent snapshot: which snapshot, how many users, which model."""

    snapshot_id: str
    digest: str
    organization_id: str
    model_type: str
    required_consents: list[str]
    user_count: int
    run: str | None
    aggregation_round: int
    model_name: str | None
    model_version: str | None
    used_at: str | None


class DsrView(BaseModel):
    """A data subject request (the export of an access request is not listed, only returned by
    processing)."""

    id: str
    organization_id: str
    user_id: str
    request_type: str
    status: str
    deadline: str | None
    overdue: bool
    created_at: str | None
    completed_at: str | None
    processed_by: str | None
    request_details: dict[str, Any]
    response_details: dict[str, Any] | None = None
    compaction: dict[str, Any] | None = None


def consent_counts(session: Session, organization_id: str | uuid.UUID) -> ConsentCounts:
    org = scope.organization(session, organization_id).id
    given = func.sum(case((UserConsent.consent_given.is_(True), 1), else_=0))
    withdrawn = func.sum(case((UserConsent.consent_given.is_(True), 0), else_=1))
    rows = session.execute(
        select(UserConsent.consent_type, given, withdrawn)
        .where(UserConsent.organization_id == org)
        .group_by(UserConsent.consent_type)
        .order_by(UserConsent.consent_type)
    )
    users = session.scalar(
        select(func.count(func.distinct(UserConsent.user_id))).where(UserConsent.organization_id == org)
    )
    return ConsentCounts(
        organization_id=str(org),
        users_with_consents=int(users or 0),
        counts=[
            ConsentTypeCount(consent_type=t, given=int(g or 0), withdrawn=int(w or 0)) for t, g, w in rows
        ],
    )


def snapshot_uses(
    session: Session,
    *,
    organization_id: str | uuid.UUID | None = None,
    run: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[SnapshotUseView]:
    """The snapshots rounds trained on, newest first (then by round), one page with the total."""
    limit, offset = check_window(limit, offset)
    query = select(ConsentSnapshotUse, ConsentSnapshot).join(
        ConsentSnapshot, ConsentSnapshot.id == ConsentSnapshotUse.snapshot_id
    )
    if organization_id is not None:
        query = query.where(
            ConsentSnapshotUse.organization_id == parse_uuid(organization_id, "organization id")
        )
    if run is not None:
        query = query.where(ConsentSnapshotUse.run_id == run)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    ordered = query.order_by(
        ConsentSnapshotUse.created_at.desc(),
        ConsentSnapshotUse.aggregation_round.desc(),
        ConsentSnapshotUse.id,
    )
    items = [
        SnapshotUseView(
            snapshot_id=str(snap.id),
            digest=snap.digest,
            organization_id=str(use.organization_id),
            model_type=snap.model_type,
            required_consents=list(snap.required_consents),
            user_count=snap.user_count,
            run=use.run_id,
            aggregation_round=use.aggregation_round,
            model_name=use.model_name,
            model_version=use.model_version,
            used_at=iso(use.created_at),
        )
        for use, snap in session.execute(ordered.limit(limit).offset(offset))
    ]
    return Page[SnapshotUseView](items=items, total=total, limit=limit, offset=offset)


def list_dsrs(
    session: Session,
    *,
    organization_id: str | uuid.UUID | None = None,
    status: str | None = None,
    overdue: bool | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[DsrView]:
    """Requests overdue first, then by deadline (``dsr list``'s order), filtered, one page."""
    rows = [
        dsr.request_as_dict(r, include_response=False)
        for r in dsr.list_requests(session, organization_id, status)
    ]
    if overdue is not None:
        rows = [r for r in rows if r["overdue"] is overdue]
    rows.sort(key=lambda r: not r["overdue"])  # stable: deadline order kept within each group
    page = page_of(rows, limit, offset)
    return Page[DsrView](
        items=[DsrView(**r) for r in page.items], total=page.total, limit=page.limit, offset=page.offset
    )


def process_and_compact(
    engine: Engine,
    request_id: str | uuid.UUID,
    *,
    organization_id: str | uuid.UUID | None = None,
    reject_reason: str | None = None,
    processed_by: str | uuid.UUID | None = None,
    rectified_email: str | None = None,
    vault: PersonalDataVault | None = None,
    compact: bool = True,
) -> dict[str, Any]:
    """``dsr process``: carry out (or reject) the request in one transaction, then, after a
    completed erasure has committed, rewrite the touched tables (or say it was deferred)."""
    with transaction(engine) as session:
        request = dsr.process_request(
            session,
            request_id,
            organization_id=organization_id,
            reject_reason=reject_reason,
            processed_by=processed_by,
            rectified_email=rectified_email,
            vault=vault,
        )
        record = dsr.request_as_dict(request)
    if record["request_type"] == "erasure" and record["status"] == "completed":
        record["compaction"] = (
            erasure.compact(engine)
            if compact
            else {"status": "deferred", "reason": "run `accute-fl dsr compact` before the erasure deadline"}
        )
    return record
