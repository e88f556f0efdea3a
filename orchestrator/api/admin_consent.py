"""Admin API: consent counts, the snapshots rounds trained on, data subject requests.

Processing a request is ``accute-fl dsr process`` (``consent_gate.admin_views.process_and_compact``,
which the CLI calls): carried out or rejected in one transaction, audited, and after a completed
erasure the touched tables are rewritten. An organization admin acts only on its own
organization's requests (another one's is reported missing, as the CLI's ``--org`` does).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the routes' annotations.
import uuid
from typing import TYPE_CHECKING, Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from consent_gate import admin_views
from consent_gate.admin_views import ConsentCounts, DsrView, SnapshotUseView
from orchestrator.api.admin_scope import AdminDeps, scope_for
from orchestrator.auth import Principal
from schema.pagination import MAX_LIMIT, Page

if TYPE_CHECKING:
    from orchestrator.api.deps import Guard
    from orchestrator.service import Services

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page.")]
Offset = Annotated[int, Query(ge=0, description="Rows to skip.")]


class ProcessBody(BaseModel):
    """``dsr process``'s options."""

    model_config = ConfigDict(extra="forbid")

    reject_reason: str | None = Field(
        default=None, min_length=1, max_length=500, description="Reject the request with this reason instead."
    )
    rectified_email: str | None = Field(
        default=None, max_length=320, description="The corrected email (rectification requests)."
    )
    processed_by: uuid.UUID | None = Field(
        default=None, description="Id of the user processing it (a user of the request's organization)."
    )
    compact: bool = Field(
        default=True, description="After an erasure, rewrite the touched tables now (else `dsr compact`)."
    )


def build(services: "Services", guard: "Guard") -> APIRouter:
    deps = AdminDeps(services, guard)
    Admin = Annotated[Principal, Depends(deps.admin)]
    router = APIRouter(prefix="/v1/admin", tags=["admin: consent"])

    @router.get("/consent/{org}/counts", response_model=ConsentCounts, summary="Consents per type")
    def counts(who: Admin, request: Request, org: uuid.UUID) -> ConsentCounts:
        """Users' current consents of the organization: given and withdrawn, per consent type."""
        scope_for(who, org, request)
        return deps.read(lambda s: admin_views.consent_counts(s, org))

    @router.get(
        "/consent/snapshots", response_model=Page[SnapshotUseView], summary="Snapshots each round used"
    )
    def snapshots(
        who: Admin,
        request: Request,
        organization_id: uuid.UUID | None = None,
        run: str | None = Query(default=None, max_length=100),
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[SnapshotUseView]:
        """Which consent snapshot (digest, users) each round of each run trained on, newest first."""
        org = scope_for(who, organization_id, request)
        return deps.read(
            lambda s: admin_views.snapshot_uses(s, organization_id=org, run=run, limit=limit, offset=offset)
        )

    @router.get("/dsr", response_model=Page[DsrView], summary="Data subject requests, overdue first")
    def list_requests(
        who: Admin,
        request: Request,
        organization_id: uuid.UUID | None = None,
        status: Literal["pending", "in_progress", "completed", "rejected"] | None = None,
        overdue: bool | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[DsrView]:
        """Overdue (open past the 30-day deadline) first, then soonest deadline first."""
        org = scope_for(who, organization_id, request)
        return deps.read(
            lambda s: admin_views.list_dsrs(
                s, organization_id=org, status=status, overdue=overdue, limit=limit, offset=offset
            )
        )

    @router.post("/dsr/{request_id}/process", response_model=DsrView, summary="Carry out or reject a request")
    async def process(who: Admin, request: Request, request_id: uuid.UUID, body: ProcessBody) -> DsrView:
        """As ``accute-fl dsr process``: access/portability return the export in
        ``response_details``; erasure reports each store and the compaction."""
        from orchestrator.keys import personal_data_vault

        org = scope_for(who, None, request)
        vault = personal_data_vault(services.settings) if body.reject_reason is not None else None

        def run() -> DsrView:
            record = admin_views.process_and_compact(
                services.engine,
                request_id,
                organization_id=org,
                reject_reason=body.reject_reason,
                processed_by=body.processed_by,
                rectified_email=body.rectified_email,
                vault=vault,
                compact=body.compact,
            )
            return DsrView(**record)

        return await anyio.to_thread.run_sync(run)

    return router
