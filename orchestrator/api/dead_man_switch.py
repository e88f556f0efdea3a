"""``/v1/orgs/{org}/dead-man-switch``: configure, read, heartbeat, and (platform admins) reverse.

An organization's admin configures its switch and sends heartbeats; only a platform admin may
reverse a firing (whoever took over the organization's admin token must not be able to lift the
restrictions the switch put on it). The watcher runs inside ``serve`` (``orchestrator.service``)
and as ``accute-fl dms watch``.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the routes' annotations.
import uuid
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends

from orchestrator.api.deps import Guard
from orchestrator.auth import Principal
from orchestrator.security import dms_actions
from orchestrator.security.dead_man_switch import SwitchSettings
from orchestrator.service import Services
from schema.db import transaction
from schema.errors import PermissionDeniedError
from schema.timeutil import utcnow

ADMIN_ROLES = ("org_admin",)


def build(services: Services, guard: Guard) -> APIRouter:
    router = APIRouter(prefix="/v1/orgs/{org}/dead-man-switch", tags=["dead-man-switch"])
    AdminOrg = Annotated[uuid.UUID, Depends(guard.org_scope(ADMIN_ROLES))]
    Caller = Annotated[Principal, Depends(guard.principal)]

    def invalidate(org: uuid.UUID) -> None:
        if services.cascade is not None:
            services.cascade.invalidate(org)

    @router.put("", summary="Configure the organization's dead man's switch")
    async def configure(org: AdminOrg, who: Caller, body: SwitchSettings) -> dict[str, Any]:
        """Create or replace the switch (counts as a heartbeat). Contacts are user ids, never addresses."""

        def write() -> dict[str, Any]:
            now = utcnow()
            with transaction(services.engine) as session:
                dms_actions.configure(session, org, body, now=now, user_id=who.user_id)
                return dms_actions.status(session, org, now)

        return await anyio.to_thread.run_sync(write)

    @router.get("", summary="The switch's configuration and state")
    async def show(org: AdminOrg) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            with transaction(services.engine) as session:
                return dms_actions.status(session, org, utcnow())

        return await anyio.to_thread.run_sync(read)

    @router.post("/heartbeat", summary="The organization's admin is alive")
    async def heartbeat(org: AdminOrg, who: Caller) -> dict[str, Any]:
        def write() -> dict[str, Any]:
            with transaction(services.engine) as session:
                return dms_actions.heartbeat(session, org, now=utcnow(), user_id=who.user_id)

        return await anyio.to_thread.run_sync(write)

    @router.post("/reverse", summary="Lift a fired switch's restrictions (platform admins only)")
    async def reverse(org: uuid.UUID, who: Caller) -> dict[str, Any]:
        if "platform_admin" not in who.roles:
            raise PermissionDeniedError("forbidden")

        def write() -> dict[str, Any]:
            with transaction(services.engine) as session:
                return dms_actions.reverse(session, org, now=utcnow(), by=who.subject, user_id=who.user_id)

        result = await anyio.to_thread.run_sync(write)
        invalidate(org)
        return result

    return router
