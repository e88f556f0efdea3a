"""Admin API: ``accute-fl audit verify`` over HTTP (``schema.audit_anchors.verify_all``).

A platform admin verifies every chain (or one organization's); an organization admin its own.
A broken chain is a 200 answer with ``ok: false`` and the first bad record: the check ran.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the routes' annotations.
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from orchestrator.api.admin_scope import AdminDeps, scope_for
from orchestrator.auth import Principal
from schema import audit_anchors

if TYPE_CHECKING:
    from orchestrator.api.deps import Guard
    from orchestrator.service import Services


class ChainView(BaseModel):
    organization_id: str
    records: int
    ok: bool
    first_bad_id: int | None
    reason: str | None
    reanchors: int
    unsigned_reanchors: list[int]


class AnchorProblemView(BaseModel):
    anchor_id: int
    organization_id: str
    record_id: int
    reason: str


class VerifyResult(BaseModel):
    """``ok`` when every chain verified and every signed anchor still holds (unsigned re-anchors
    are listed, not failures)."""

    ok: bool
    chains: list[ChainView]
    anchors: list[AnchorProblemView]


def build(services: "Services", guard: "Guard") -> APIRouter:
    deps = AdminDeps(services, guard)
    Admin = Annotated[Principal, Depends(deps.admin)]
    router = APIRouter(prefix="/v1/admin", tags=["admin: audit"])

    @router.post("/audit/verify", response_model=VerifyResult, summary="Verify the audit hash chains")
    async def verify(who: Admin, request: Request, organization_id: uuid.UUID | None = None) -> VerifyResult:
        """Re-hash every record of each chain, check re-anchor signatures, and, where the KEK is
        reachable here, the signing keys against it."""
        from orchestrator.keys import configured_kek

        org = scope_for(who, organization_id, request)

        def run() -> VerifyResult:
            kek = configured_kek(services.settings)
            if kek is not None:
                kek.current_version()
            reports, problems = deps.read(lambda s: audit_anchors.verify_all(s, org, kek))
            chains = [ChainView(**asdict(r)) for r in reports]
            anchors = [AnchorProblemView(**asdict(p)) for p in problems]
            return VerifyResult(ok=all(c.ok for c in chains) and not anchors, chains=chains, anchors=anchors)

        return await anyio.to_thread.run_sync(run)

    return router
