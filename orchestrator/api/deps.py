"""Who is calling: the bearer token checked once, in one place, for every authenticated route.

Every route that needs a token depends on ``Guard.principal`` (or ``Guard.org_scope`` /
``Guard.platform_admin``); the chat route, which reads its request itself, calls
``Guard.authenticate``. A policy layer (zero trust, anomaly rules) plugs in here, not in routes.

With the security gate on (``ACCUTE_ZERO_TRUST_ENABLED``, orchestrator/security/gate.py), a call
that passes the request checks the client address's rate limit (before the signature check of a
token not seen before; with the organization's otherwise), the organization's rate limit and the
zero-trust decision (429, 401 challenge, 403). A wrong answer to a challenge
(``X-Accute-Challenge-Response``) is reported to the detectors like a bad token.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the closures' annotations, which
# name ``self``.
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.auth import Principal
from schema.errors import AuthenticationError, ChallengeFailedError, PermissionDeniedError

if TYPE_CHECKING:
    from orchestrator.service import Services

_bearer = HTTPBearer(auto_error=False)


class Guard:
    """Authentication and authorization dependencies bound to one app's services."""

    def __init__(self, services: "Services") -> None:
        self.services = services

    async def authenticate(self, token: str, request: Request | None = None) -> Principal:
        """The token's principal; with ``request``, also through the anomaly detectors (blocks,
        failed tokens, volumes) and the security gate (rate limits, zero trust), when they are on."""
        security = self.services.security
        address = client_address(request) if request is not None else None
        if security is not None and address is not None and security.is_blocked(address=address):
            raise PermissionDeniedError("forbidden")  # auto-blocked (credential stuffing): this address only
        gate = self.services.gate if request is not None else None
        known = self.services.tokens.cached(token)
        fresh = known is None
        if gate is not None and fresh:  # the address's limit before a signature check it could flood
            await gate.limit_address(request.scope)  # type: ignore[union-attr]
        if known is None:
            try:
                # First sight of this token: RS256 and maybe a public-key read, off the event loop.
                known = await anyio.to_thread.run_sync(self.services.tokens.verify, token)
            except AuthenticationError:
                if security is not None:
                    security.auth_failed(address)
                raise
        if security is not None:
            if security.is_blocked(subject=known.subject):
                raise PermissionDeniedError("forbidden")  # auto-blocked (repeated privilege probes)
            security.request_seen(known, address)
        if gate is not None:
            assert request is not None
            try:
                await gate.admit(known, request.scope, address_counted=fresh, token=token)
            except ChallengeFailedError:
                if security is not None:  # a wrong or replayed second factor counts like a bad token
                    security.auth_failed(address)
                raise
            except PermissionDeniedError:
                # The gate refuses another organization's path first: still a privilege probe.
                if security is not None and not gate.role_ok(known, request.scope):
                    security.forbidden(known, _path_org(request), (), address, request.url.path)
                raise
        return known

    def authorize(
        self,
        who: Principal,
        org: uuid.UUID | None,
        roles: tuple[str, ...],
        address: str | None = None,
        path: str | None = None,
    ) -> None:
        """``who`` may act on ``org`` with one of ``roles`` (any organization when ``org`` is None);
        a refusal is reported to the anomaly detectors (``privilege_escalation``) before the 403."""
        try:
            if org is None:
                if "platform_admin" not in who.roles and not who.roles.intersection(roles):
                    raise PermissionDeniedError("forbidden")
            else:
                who.require_org(org, roles)
        except PermissionDeniedError:
            if self.services.security is not None:
                self.services.security.forbidden(who, org, roles, address, path)
            raise

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

        async def check(
            request: Request, org: uuid.UUID, who: Annotated[Principal, Depends(self.principal)]
        ) -> uuid.UUID:
            self.authorize(who, org, roles, client_address(request), request.url.path)
            return org

        return check

    def any_role(self, roles: tuple[str, ...]) -> Any:
        """A dependency: the caller, if it holds one of ``roles`` (platform admins always may)."""

        async def check(request: Request, who: Annotated[Principal, Depends(self.principal)]) -> Principal:
            self.authorize(who, None, roles, client_address(request), request.url.path)
            return who

        return check


def client_address(request: Request) -> str | None:
    """The peer's IP as the server saw it (a proxy in front must be trusted explicitly by uvicorn)."""
    return request.client.host if request.client is not None else None


def _path_org(request: Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(request.path_params.get("org")))
    except ValueError:
        return None
