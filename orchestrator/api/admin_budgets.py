"""Admin API: privacy budgets (overview, one budget's ledger, the cap) and budget alerts.

The numbers are those of ``accute-fl budget show`` / ``budget history`` (``privacy.budget_views``
calls the same ledger functions); setting a cap is ``budget set`` (platform admins only, audited).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the routes' annotations.
import uuid
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.admin_scope import AdminDeps, scope_for
from orchestrator.auth import Principal
from privacy import budget_views
from privacy.budget_views import AlertView, BudgetDetail, BudgetView
from schema.db import transaction
from schema.pagination import MAX_LIMIT, Page

if TYPE_CHECKING:
    from orchestrator.api.deps import Guard
    from orchestrator.service import Services

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page.")]
Offset = Annotated[int, Query(ge=0, description="Rows to skip.")]


class CapBody(BaseModel):
    """``budget set``'s options: the cap, its delta, and the unit (every unit when omitted)."""

    model_config = ConfigDict(extra="forbid")

    epsilon_cap: float = Field(gt=0, description="Epsilon cap > 0.")
    delta: float = Field(gt=0, lt=1, description="Target delta in (0, 1).")
    unit: Literal["record", "user", "tenant"] | None = Field(
        default=None, description="record, user or tenant (default: every unit, each its own epsilon)."
    )


def build(services: "Services", guard: "Guard") -> APIRouter:
    deps = AdminDeps(services, guard)
    Admin = Annotated[Principal, Depends(deps.admin)]
    PlatformAdmin = Annotated[Principal, Depends(deps.platform_admin)]
    router = APIRouter(prefix="/v1/admin", tags=["admin: budgets"])

    @router.get("/budgets", response_model=Page[BudgetView], summary="Every budget, filtered and paginated")
    def list_budgets(
        who: Admin,
        request: Request,
        organization_id: uuid.UUID | None = None,
        model_type: str | None = None,
        unit: Literal["record", "user", "tenant"] | None = None,
        status: Literal["ok", "near_cap", "exhausted"] | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[BudgetView]:
        """Sorted as ``budget show`` (organization id, model type, unit); ``total`` counts every
        match. ``near_cap``: epsilon spent at least 80 % of the cap; ``exhausted``: at the cap."""
        org = scope_for(who, organization_id, request)
        return deps.read(
            lambda s: budget_views.list_budgets(
                s,
                policy=deps.policy(),
                organization_id=org,
                model_type=model_type,
                unit=unit,
                status=status,
                limit=limit,
                offset=offset,
            )
        )

    @router.get(
        "/budgets/{org}/{model_type}", response_model=BudgetDetail, summary="One budget and its ledger"
    )
    def budget_detail(
        who: Admin,
        request: Request,
        org: uuid.UUID,
        model_type: str,
        unit: Literal["record", "user", "tenant"] | None = None,
    ) -> BudgetDetail:
        """The budget of each unit, and the ledger's events in order with epsilon after each, the
        run each paid for, and the accountant that computed it (``budget history``)."""
        scope_for(who, org, request)
        return deps.read(
            lambda s: budget_views.budget_detail(s, org, model_type, policy=deps.policy(), unit=unit)
        )

    @router.put(
        "/budgets/{org}/{model_type}/cap",
        response_model=list[BudgetView],
        summary="Set a budget's cap (platform admins)",
    )
    def set_cap(who: PlatformAdmin, org: uuid.UUID, model_type: str, body: CapBody) -> list[BudgetView]:
        """``budget set``: the same rules (a cap below spending is allowed and stops charges),
        audited; crossing 80 % or 100 % of the new cap records an alert."""
        with transaction(services.engine) as session:
            return budget_views.set_cap(
                session, org, model_type, body.epsilon_cap, body.delta, policy=deps.policy(), unit=body.unit
            )

    @router.get("/budget-alerts", response_model=Page[AlertView], summary="Budget threshold crossings")
    def list_alerts(
        who: Admin,
        request: Request,
        organization_id: uuid.UUID | None = None,
        threshold: Literal["near_cap", "exhausted"] | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[AlertView]:
        """Each budget's crossing of 80 % (near_cap) and 100 % (exhausted) of a cap, once, newest first."""
        org = scope_for(who, organization_id, request)
        return deps.read(
            lambda s: budget_views.list_alerts(
                s, organization_id=org, threshold=threshold, limit=limit, offset=offset
            )
        )

    return router
