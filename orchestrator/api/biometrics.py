"""Behavioural biometrics: a user submits a session's behaviour summaries and gets its risk score.

``POST /v1/orgs/{org}/biometrics/sessions`` needs a token whose ``sub`` is a user of ``{org}``
(tokens without a user get 422: a baseline is per person). The score, reasons and
``anomaly_detected`` are written to ``behavioral_biometrics``, where the zero-trust policy reads
the user's latest row. The body holds numeric summaries only (``orchestrator.security.biometrics``).
"""

# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations, which name
# local aliases.

import uuid
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, Depends

from orchestrator.auth import Principal
from orchestrator.security import biometrics
from schema.anomaly_policy import load_policy
from schema.db import transaction
from schema.errors import InvalidInputError

if TYPE_CHECKING:
    from orchestrator.api.deps import Guard
    from orchestrator.service import Services

USER_ROLES = ("org_admin", "org_user")


def build(services: "Services", guard: "Guard") -> APIRouter:
    router = APIRouter(prefix="/v1/orgs/{org}/biometrics", tags=["security"])
    settings = services.settings
    key = settings.biometrics_hash_key.get_secret_value().encode() if settings.biometrics_hash_key else None
    hasher = biometrics.PatternHasher(key)
    policy = (
        services.security.policy
        if services.security is not None
        else load_policy(settings.anomaly_policy_file)
    )
    Org = Annotated[uuid.UUID, Depends(guard.org_scope(USER_ROLES))]
    Caller = Annotated[Principal, Depends(guard.principal)]

    @router.post("/sessions", status_code=201)
    async def submit_session(org: Org, who: Caller, body: biometrics.BiometricSession) -> dict[str, Any]:
        """Score one session's behaviour against the caller's baseline (risk 0-100, reasons)."""
        user_id = who.user_id
        if user_id is None:
            raise InvalidInputError("this token names no user of the organization; biometrics are per user")

        def write() -> dict[str, Any]:
            with transaction(services.engine) as session:
                return biometrics.submit(
                    session,
                    organization_id=org,
                    user_id=user_id,
                    body=body,
                    policy=policy,
                    hasher=hasher,
                    min_sessions=settings.biometrics_min_sessions,
                )

        return await anyio.to_thread.run_sync(write)

    return router
