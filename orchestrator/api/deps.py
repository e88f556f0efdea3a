"""Who is calling: the bearer token checked once, in one place, for every authenticated route.

Every route that needs a token depends on ``Guard.principal`` (or ``Guard.org_scope`` /
``Guard.platform_admin``); the chat route, which reads its request itself, calls
``Guard.authenticate``. A policy layer (zero trust, anomaly rules) plugs in here, not in routes.

With the security gate on (``ACCUTE_ZERO_TRUST_ENABLED``, orchestrator/security/gate.py), a call
that passes the request checks the client address's rate limit (before the signature check of a
token not seen before; with the organization's otherwise), the organization's rate limit and the
zero-trust decision (429, 401 challenge, 403).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the closures' annotations, which
# name ``self``.
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.auth import Principal
from schema.errors import AuthenticationError, PermissionDeniedError

if TYPE_CHECKING:
    from orchestrator.service import Services

_bearer = HTTPBearer(auto_error=False)


class Guard:
    """Authentication and authorization dependencies bound to one app's services."""

    def __init__(self, services: "Services") -> None:
        self.services = services

    async def authenticate(self, token: str, request: Request | None = None) -> Principal:
        """The token's principal; with ``request``, also through the security gate (if on)."""
        gate = self.services.gate if request is not None else None
        known = self.services.tokens.cached(token)
        fresh = known is None
        if gate is not None and fresh:  # the address's limit before a signature check it could flood
            await gate.limit_address(request.scope)  # type: ignore[union-attr]
        if known is None:
            # First sight of this token: RS256 and maybe a public-key read, off the event loop.
            known = await anyio.to_thread.run_sync(self.services.tokens.verify, token)
        if gate is not None:
            await gate.admit(known, request.scope, address_counted=fresh)  # type: ignore[union-attr]
        return known

    async def principal(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise AuthenticationError("unauthenticated")
        return await self.authenticate(credentials.credentials, request)

    def org_scope(self, roles: tuple[str, ...]) -> Any:
        """A dependency: the path's ``{org}``, if the caller may act on it with one of ``roles``."""

        async def check(org: uuid.UUID, who: Annotated[Principal, Depends(self.principal)]) -> uuid.UUID:
            who.require_org(org, roles)
            return org

        return check

    def any_role(self, roles: tuple[str, ...]) -> Any:
        """A dependency: the caller, if it holds one of ``roles`` (platform admins always may)."""

        async def check(who: Annotated[Principal, Depends(self.principal)]) -> Principal:
            if "platform_admin" not in who.roles and not who.roles.intersection(roles):
                raise PermissionDeniedError("forbidden")
            return who

        return check
