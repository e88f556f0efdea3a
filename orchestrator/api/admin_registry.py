"""Admin API: the VAMN model registry (versions with lineage), promote and roll back.

Reading is open to organization admins (among a version's contributors they see only whether
their own organization is one); promoting and rolling back are for platform admins, audited, and
the cascade of this process serves the new active version at the next request (its cached
active row is dropped); other workers pick it up within ``ACCUTE_CONFIG_CACHE_TTL_S``.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the routes' annotations.
import uuid
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Query, Request

from orchestrator.api.admin_scope import AdminDeps, is_platform_admin, scope_for
from orchestrator.auth import Principal
from schema import registry, registry_views
from schema.db import transaction
from schema.pagination import MAX_LIMIT, Page
from schema.registry_views import RegistryVersion

if TYPE_CHECKING:
    from orchestrator.api.deps import Guard
    from orchestrator.service import Services

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page.")]
Offset = Annotated[int, Query(ge=0, description="Rows to skip.")]


def build(services: "Services", guard: "Guard") -> APIRouter:
    deps = AdminDeps(services, guard)
    Admin = Annotated[Principal, Depends(deps.admin)]
    PlatformAdmin = Annotated[Principal, Depends(deps.platform_admin)]
    router = APIRouter(prefix="/v1/admin", tags=["admin: registry"])

    def serve_now(head_type: str) -> None:
        if services.cascade is not None:
            services.cascade.vamn.forget(head_type)

    @router.get("/registry", response_model=Page[RegistryVersion], summary="Model versions with lineage")
    def list_versions(
        who: Admin,
        request: Request,
        head_type: str | None = Query(default=None, max_length=50),
        status: str | None = Query(default=None, max_length=50),
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[RegistryVersion]:
        """By head, newest first: checksum, status, and the run, round, metric and contributing
        organizations a version was published from."""
        org = None if is_platform_admin(who) else scope_for(who, None, request)
        return deps.read(
            lambda s: registry_views.list_versions(
                s, head_type=head_type, status=status, organization_id=org, limit=limit, offset=offset
            )
        )

    @router.post("/registry/{model_id}/promote", response_model=RegistryVersion, summary="Serve this version")
    def promote(who: PlatformAdmin, model_id: uuid.UUID) -> RegistryVersion:
        """Make the version the active one of its head (the previous one is retired), audited."""
        with transaction(services.engine) as session:
            row = registry.promote(session, model_id, by=who.subject)
            view = registry_views.version_view(session, row)
        serve_now(view.head_type)
        return view

    @router.post(
        "/registry/{head_type}/rollback",
        response_model=RegistryVersion,
        summary="Serve the head's previous version again",
    )
    def rollback(who: PlatformAdmin, head_type: str) -> RegistryVersion:
        """The version retired most recently becomes active again (the current one retired), audited."""
        with transaction(services.engine) as session:
            row = registry.rollback(session, head_type, by=who.subject)
            view = registry_views.version_view(session, row)
        serve_now(view.head_type)
        return view

    return router
