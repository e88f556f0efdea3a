"""Who may see which organization in the admin API, decided in one place.

A ``platform_admin`` sees every organization (or the one it filters on); an ``org_admin`` sees
only its own: its filters are forced to its organization, and naming another one answers 403
``{"error": "forbidden"}`` exactly as the ``/v1/orgs/{org}/...`` routes do, logged at WARNING
(subject, role and route; never the token). ``org_user`` and ``node`` tokens are refused.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the dependencies' annotations.
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from fastapi import Request
from sqlalchemy.orm import Session

from orchestrator.auth import Principal
from privacy.ledger import LedgerPolicy
from schema.db import transaction
from schema.errors import PermissionDeniedError

if TYPE_CHECKING:
    from orchestrator.api.deps import Guard
    from orchestrator.service import Services

log = logging.getLogger("accute.orchestrator.admin")

#: Roles the admin API admits besides platform admins (who always may).
ADMIN_ROLES = ("org_admin",)

T = TypeVar("T")


def is_platform_admin(who: Principal) -> bool:
    return "platform_admin" in who.roles


def scope_for(who: Principal, requested: uuid.UUID | None, request: Request) -> uuid.UUID | None:
    """The organization a query is limited to: None (every one) only for a platform admin."""
    if is_platform_admin(who):
        return requested
    if requested is not None and requested != who.organization_id:
        log.warning(
            "admin probe refused: subject %s (%s of organization %s) asked for organization %s on %s %s",
            who.subject,
            ",".join(sorted(who.roles)),
            who.organization_id,
            requested,
            request.method,
            getattr(request.scope.get("route"), "path", request.url.path),
        )
        raise PermissionDeniedError("forbidden")
    if who.organization_id is None:  # an org_admin token always names its organization
        raise PermissionDeniedError("forbidden")
    return who.organization_id


class AdminDeps:
    """The dependencies admin routers share: the caller (platform or organization admin), the
    caller when it must be a platform admin, and reads in one transaction."""

    def __init__(self, services: "Services", guard: "Guard") -> None:
        self.services = services
        self.admin = guard.any_role(ADMIN_ROLES)
        self.platform_admin = guard.any_role(())

    def policy(self) -> LedgerPolicy:
        return LedgerPolicy.from_settings(self.services.settings)

    def read(self, work: Callable[[Session], T]) -> T:
        with transaction(self.services.engine) as session:
            return work(session)
