"""Security anomalies for admins: list, read, resolve (``/v1/security/anomalies``).

A platform admin sees every organization's rows (and the system-wide ones: bad tokens name no
organization); an organization admin sees its own organization's only, and another
organization's row is a 404 like a missing one. Resolving records ``reviewed_by`` (the token's
user, when it names one), ``reviewed_at`` and ``resolution``, is audited, and ends the row's block
(in this process at once; in the other workers within ``ACCUTE_SECURITY_CHANGE_POLL_S``, at once
with Redis: ``orchestrator.security.block_sync``).
"""

# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations, which name
# local aliases.

import uuid
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.auth import Principal
from schema import security_anomalies
from schema.db import transaction

if TYPE_CHECKING:
    from orchestrator.api.deps import Guard
    from orchestrator.service import Services

ADMIN_ROLES = ("org_admin",)


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: str = Field(min_length=1, max_length=security_anomalies.RESOLUTION_MAX)


def _scope(who: Principal) -> uuid.UUID | None:
    """None (every organization) for a platform admin, else the caller's organization."""
    return None if "platform_admin" in who.roles else who.organization_id


def build(services: "Services", guard: "Guard") -> APIRouter:
    router = APIRouter(prefix="/v1/security/anomalies", tags=["security"])
    Admin = Annotated[Principal, Depends(guard.any_role(ADMIN_ROLES))]

    @router.get("")
    async def list_anomalies(
        who: Admin,
        status: Annotated[str, Query(pattern="^(open|resolved|all)$")] = "open",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Newest first: the caller's organization's anomalies (every one for a platform admin)."""

        def read() -> list[dict[str, Any]]:
            with transaction(services.engine) as session:
                rows = security_anomalies.list_rows(session, _scope(who), status, limit)
                return [security_anomalies.as_dict(r) for r in rows]

        return await anyio.to_thread.run_sync(read)

    @router.get("/{anomaly_id}")
    async def get_anomaly(who: Admin, anomaly_id: uuid.UUID) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            with transaction(services.engine) as session:
                return security_anomalies.as_dict(security_anomalies.get(session, anomaly_id, _scope(who)))

        return await anyio.to_thread.run_sync(read)

    @router.post("/{anomaly_id}/resolve")
    async def resolve_anomaly(who: Admin, anomaly_id: uuid.UUID, body: ResolveBody) -> dict[str, Any]:
        """Close the anomaly with a resolution (e.g. ``false_positive``, ``confirmed``); audited."""

        def write() -> dict[str, Any]:
            with transaction(services.engine) as session:
                row = security_anomalies.resolve(
                    session,
                    anomaly_id,
                    _scope(who),
                    resolution=body.resolution,
                    reviewer=who.subject,
                    reviewer_user_id=who.user_id,
                )
                return security_anomalies.as_dict(row)

        result = await anyio.to_thread.run_sync(write)
        if services.security is not None and result["subject"]:
            services.security.unblock(result["subject"])
        if services.block_sync is not None:  # the other workers lift it too, and the gate here
            await anyio.to_thread.run_sync(services.block_sync.changed)
        return result

    return router
