"""The security gate of the HTTP service: rate limits, threat intelligence and the zero-trust policy
for every authenticated request, in that order, all from memory.

``Guard.authenticate`` (orchestrator/api/deps.py) calls ``limit_address`` before it checks the
token and ``admit`` after. ``admit``:

1. counts the request against its organization's rate limit (429 with ``Retry-After`` over it);
2. gathers the ``Factors``: the token's organization against the path's ``{org}`` (role/org vs
   resource; the route's own role check still follows), the client address (the ASGI ``client``)
   and ``User-Agent`` against the threat index, the user's and organization's unresolved recent
   anomalies and auto-blocks, the user's latest behavioural risk, the ``X-Device-Id`` header
   against the user's trusted devices, and the hour (UTC);
3. decides (``zero_trust.decide``) and queues the decision for ``zero_trust_access_log``;
4. answers: allow returns; challenge raises ``ChallengeRequiredError`` (401 with
   ``WWW-Authenticate: Bearer error="insufficient_user_authentication", challenge="mfa"``); deny
   raises ``PermissionDeniedError`` (403 ``{"error": "forbidden"}``, the body of today's 403).

Answering an ``mfa`` challenge: the client repeats the request with
``X-Accute-Challenge-Response: totp=<6 digits>`` (the user's TOTP, ``accute-fl user mfa enroll``).
A right code for a time step not used before lets the request through and logs the challenge with
``challenge_passed = true``, and that token is stepped up for ``ACCUTE_MFA_STEP_UP_S``
(``step_up.StepUps``: its challenged requests pass without a code meanwhile); a wrong, expired or
replayed one is a 401 ``challenge_failed`` (logged with ``challenge_passed = false``; ``Guard``
counts it toward ``credential_stuffing`` for the address). Only a request the policy challenges
reads the header or the step-up, so they cost the others nothing.

A refresher thread reloads the threat index (when the table changed) and the anomaly/behaviour/
device context every few seconds; nothing on the request path touches the database.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import anyio
from sqlalchemy import Engine

from orchestrator.auth import Principal
from orchestrator.security.access_log import AccessLogWriter
from orchestrator.security.context import SecurityContext, load_context
from orchestrator.security.rate_limit import Limits, make_limits, retry_after_header
from orchestrator.security.step_up import StepUps, token_key
from orchestrator.security.threat_index import Match, ThreatIntel
from orchestrator.security.zero_trust import ALLOW, CHALLENGE, Factors, Policy, decide, load_policy
from schema import mfa
from schema.config import Settings
from schema.db import transaction
from schema.errors import (
    ChallengeFailedError,
    ChallengeRequiredError,
    InvalidInputError,
    PermissionDeniedError,
    RateLimitedError,
)
from schema.personal_data import PersonalDataVault

log = logging.getLogger("accute.security")
DEVICE_HEADER = b"x-device-id"
CHALLENGE_HEADER = b"x-accute-challenge-response"
MAX_CHALLENGE_RESPONSE = 64


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def client_address(scope: Any) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


class SecurityGate:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        policy: Policy | None = None,
        vault: PersonalDataVault | None = None,
    ) -> None:
        self.engine = engine
        self.vault = vault
        """Opens users' sealed TOTP secrets; without one no challenge can be answered."""
        self.settings = settings
        self.policy = policy or load_policy(settings.zero_trust_policy_path)
        self.threats = ThreatIntel()
        self.context = SecurityContext()
        self.limits: Limits = make_limits(settings)
        self.step_ups = StepUps(settings)
        self.access_log = AccessLogWriter(
            engine,
            flush_ms=settings.zero_trust_log_flush_ms,
            batch=settings.zero_trust_log_batch,
            capacity=settings.zero_trust_log_queue,
        )
        self.log_allowed = settings.zero_trust_log_allowed
        self.org_limit = settings.rate_limit_org_per_minute
        self.address_limit = settings.rate_limit_address_per_minute
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload the threat index (if the table changed) and the context (always)."""
        self.threats.refresh(self.engine)
        self.reload_context()

    def reload_context(self) -> None:
        """A fresh anomaly/behaviour/device snapshot (the refresher, and ``BlockSync`` on a change)."""
        self.context = load_context(self.engine, self.policy.anomaly_window_s)

    def start(self) -> None:
        """Load once, then keep refreshing in a daemon thread.

        A database that is down at start does not stop the service (``/readyz`` says so); the
        snapshots stay empty until the refresher's next successful load.
        """
        try:
            self.refresh()
        except Exception as exc:
            log.warning(
                "security gate: first load failed (%s); retrying in the background", type(exc).__name__
            )
        self._thread = threading.Thread(target=self._refresher, name="accute-security-refresh", daemon=True)
        self._thread.start()

    def _refresher(self) -> None:
        threat_every = self.settings.threat_intel_refresh_s
        context_every = self.settings.security_context_refresh_s
        next_threat = time.monotonic() + threat_every
        next_context = time.monotonic() + context_every
        while not self._stop.wait(max(min(next_threat, next_context) - time.monotonic(), 0.01)):
            now = time.monotonic()
            try:
                if now >= next_threat:
                    next_threat = now + threat_every
                    self.threats.refresh(self.engine)
                if now >= next_context:
                    next_context = now + context_every
                    self.reload_context()
            except Exception as exc:  # keep the last good snapshot; try again next time
                log.warning("security refresh failed (%s); keeping the last snapshot", type(exc).__name__)

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.access_log.close()
        self.step_ups.close()
        await self.limits.close()

    # -- the request path -----------------------------------------------------------------------------
    async def _address_limit(self, address: str | None) -> None:
        if self.address_limit and address is not None:
            wait = await self.limits.hit("address", address, self.address_limit)
            if wait is not None:
                raise RateLimitedError(
                    f"more than {self.address_limit} requests a minute from this address; retry later",
                    retry_after_header(wait),
                )

    async def _org_limit(self, org: uuid.UUID | None) -> None:
        if self.org_limit and org is not None:
            wait = await self.limits.hit("org", str(org), self.org_limit)
            if wait is not None:
                raise RateLimitedError(
                    f"more than {self.org_limit} requests a minute for this organization; retry later",
                    retry_after_header(wait),
                )

    async def limit_address(self, scope: Any) -> None:
        """The address's rate limit alone (before an unknown token's signature check)."""
        await self._address_limit(client_address(scope))

    async def admit(
        self, who: Principal, scope: Any, address_counted: bool = True, token: str | None = None
    ) -> None:
        """Rate limits, then the zero-trust decision for ``who`` calling ``scope``; raises unless allowed.

        ``address_counted=False``: the address limit was not checked yet (a cached token).
        ``token``: the bearer token itself, to which a passed challenge's step-up is bound.
        """
        org = who.organization_id
        address = client_address(scope)
        if not address_counted and self.address_limit:
            await self._address_limit(address)
        if self.org_limit:
            await self._org_limit(org)
        user = who.user_id
        threats = self.threats.index
        context = self.context
        match: Match | None = threats.match_ip(address)
        if match is None and threats.agents:
            match = threats.match_agent(_header(scope, b"user-agent"))
        if match is None and user is not None and self.threats.listed_users:  # threat intel: email
            match = self.threats.match_user(user)
        hour = int(time.time() // 3600 % 24)
        if context.empty:  # nothing flagged anywhere (the usual case): skip the lookups
            factors = Factors(
                role_ok=self.role_ok(who, scope),
                threat=match.indicator if match is not None else None,
                threat_severity=match.severity if match is not None else None,
                hour_utc=hour,
            )
            device_id = None
        else:
            device, device_id = (
                context.device(user, _header(scope, DEVICE_HEADER)) if context.devices else (None, None)
            )
            behaviour = context.behaviour.get(user) if user is not None else None
            factors = Factors(
                role_ok=self.role_ok(who, scope),
                threat=match.indicator if match is not None else None,
                threat_severity=match.severity if match is not None else None,
                auto_blocked=context.blocked(user, org, address, who.subject),
                anomalies=context.anomalies(user, org, address),
                biometric_risk=behaviour[0] if behaviour is not None else None,
                biometric_anomaly=behaviour[1] if behaviour is not None else False,
                device=device,
                hour_utc=hour,
            )
        decision = decide(factors, self.policy)
        passed: bool | None = None
        stepped_up = False
        if decision.outcome == CHALLENGE:
            answer = _header(scope, CHALLENGE_HEADER)
            key = token_key(token) if token is not None else None
            if answer is not None:
                passed = await self._answer(decision.challenge_type, user, answer)
                if passed and key is not None and self.step_ups.seconds:
                    await anyio.to_thread.run_sync(self.step_ups.remember, key)
            elif key is not None and self.step_ups.seconds:
                stepped_up = await anyio.to_thread.run_sync(self.step_ups.active, key)
                passed = True if stepped_up else None
        if decision.outcome != ALLOW or self.log_allowed:
            self.access_log.record(
                self.access_log.entry(
                    organization_id=org,
                    user_id=user,
                    subject=who.subject,
                    device_id=device_id,
                    resource=f"{scope.get('method', '')} {scope.get('path', '')}",
                    decision=decision,
                    factors=factors,
                    address=address,
                    challenge_passed=passed,
                    step_up=stepped_up,
                )
            )
        if decision.outcome == ALLOW or passed:
            return
        if decision.outcome == CHALLENGE:
            challenge = decision.challenge_type or self.policy.challenge_type
            raise ChallengeFailedError(challenge) if passed is False else ChallengeRequiredError(challenge)
        raise PermissionDeniedError("forbidden")

    async def _answer(self, challenge: str | None, user: uuid.UUID | None, answer: str) -> bool:
        """Whether ``answer`` (``totp=<code>``) passes an ``mfa`` challenge for ``user``; checked off
        the event loop (a database read, maybe a key unwrap, and the one-use update)."""
        method, _, code = answer.strip().partition("=")
        if (
            challenge != "mfa"
            or user is None
            or self.vault is None
            or method.strip().lower() != "totp"
            or len(answer) > MAX_CHALLENGE_RESPONSE
        ):
            return False
        vault, engine = self.vault, self.engine

        def check() -> bool:
            with transaction(engine) as session:
                return mfa.verify(session, vault, user, code.strip())

        try:
            return await anyio.to_thread.run_sync(check)
        except Exception as exc:  # a database error is not a pass
            log.warning("checking a challenge response failed (%s)", type(exc).__name__)
            return False

    @staticmethod
    def role_ok(who: Principal, scope: Any) -> bool:
        """The token's organization covers the path's ``{org}`` (platform admins cover every one)."""
        raw = (scope.get("path_params") or {}).get("org")
        if raw is None or "platform_admin" in who.roles:
            return True
        if who.organization_id is not None and raw == str(who.organization_id):
            return True
        try:
            return uuid.UUID(str(raw)) == who.organization_id
        except ValueError:
            return True  # not an id: the route answers 422 itself

    # -- other checks ---------------------------------------------------------------------------------
    def check_endpoint(self, url: str | None) -> None:
        """A provider endpoint must not point at a listed domain, URL or address."""
        if not url:
            return
        match = self.threats.index.match_url(url)
        if match is not None:
            raise InvalidInputError(
                f"api_endpoint is listed in threat intelligence ({match.indicator}); choose another provider endpoint"
            )

    def check_hash(self, digest: str | None, what: str) -> None:
        match = self.threats.index.match_hash(digest)
        if match is not None:
            raise PermissionDeniedError(f"{what} {digest} is listed in threat intelligence")
