"""Admin API: federated runs, one run's rounds, contributions (``accute-fl runs list|show``).

An organization admin sees only the runs its organization took part in, and in them only its own
tenant's statuses and epsilon; another organization's run answers 404 like an unknown one.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the routes' annotations.
import uuid
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Query, Request

from fl_server import run_views
from fl_server.run_views import ContributionView, RunDetail, RunView
from orchestrator.api.admin_scope import AdminDeps, scope_for
from orchestrator.auth import Principal
from schema.pagination import MAX_LIMIT, Page

if TYPE_CHECKING:
    from orchestrator.api.deps import Guard
    from orchestrator.service import Services

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page.")]
Offset = Annotated[int, Query(ge=0, description="Rows to skip.")]


def build(services: "Services", guard: "Guard") -> APIRouter:
    deps = AdminDeps(services, guard)
    Admin = Annotated[Principal, Depends(deps.admin)]
    router = APIRouter(prefix="/v1/admin", tags=["admin: runs"])

    @router.get("/runs", response_model=Page[RunView], summary="Federated runs, newest first")
    def list_runs(
        who: Admin,
        request: Request,
        organization_id: uuid.UUID | None = None,
        status: str | None = Query(default=None, max_length=20),
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[RunView]:
        """A ``running`` run silent for twice its round timeout shows ``abandoned``."""
        org = scope_for(who, organization_id, request)
        return deps.read(
            lambda s: run_views.list_runs(s, organization_id=org, status=status, limit=limit, offset=offset)
        )

    @router.get("/runs/{run}", response_model=RunDetail, summary="One run: rounds, statuses, epsilon")
    def run_detail(who: Admin, request: Request, run: str) -> RunDetail:
        """``run`` is the run's name (or id). Per round: the metric and each tenant's status, reason
        and epsilon after the round; per tenant: rounds sampled and accepted, and why not."""
        org = scope_for(who, None, request)
        return deps.read(lambda s: run_views.run_detail(s, run, organization_id=org))

    @router.get(
        "/contributions", response_model=Page[ContributionView], summary="Contributions of a run or a tenant"
    )
    def contributions(
        who: Admin,
        request: Request,
        run: str | None = Query(default=None, max_length=100),
        organization_id: uuid.UUID | None = None,
        status: str | None = Query(default=None, max_length=50),
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[ContributionView]:
        """Newest first, with the run each belongs to and the epsilon increment it cost."""
        org = scope_for(who, organization_id, request)
        return deps.read(
            lambda s: run_views.contributions(
                s, run=run, organization_id=org, status=status, limit=limit, offset=offset
            )
        )

    return router
