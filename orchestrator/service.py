"""The HTTP service (FastAPI): health, provider configs, the chat cascade, usage and billing.

Every ``/v1/orgs/{org}/...`` route needs a bearer token (``orchestrator.auth``) whose organization
is ``{org}`` (platform admins may act on any organization). Errors of the ``schema.errors`` tree
become responses in one handler here: ``{"error": code, "message": ...}`` with the error's HTTP
status; 401 and 403 carry the code only.

The chat route answers with ``x-accute-overhead-ms``: the milliseconds the service spent on the
request (from the moment the request reached the app until the answer was serialized) minus the
time it waited for models (provider calls, retries' attempts, VAMN inference), as LiteLLM reports
``x-litellm-overhead-duration-ms``. It includes authentication, validation, the cascade's own work
and waiting for the accounting commit.
"""

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine

from aggregation.weights_store import WeightsStore
from orchestrator import accounting, configs, openai_compat
from orchestrator.api import include_routers, metrics
from orchestrator.api.deps import Guard
from orchestrator.auth import Principal, TokenService
from orchestrator.cache import make_cache
from orchestrator.cascade import Cascade, ChatRequest, Timing, caller_key
from orchestrator.edge import RequestLimits
from orchestrator.egress import EgressPolicy
from orchestrator.keys import KeyRing, kek_provider
from orchestrator.security.anomalies import SecurityMonitor, build_monitor
from orchestrator.security.block_sync import BlockSync
from orchestrator.security.gate import SecurityGate
from orchestrator.upstream import make_upstream
from orchestrator.vamn import VamnServer
from schema.config import Settings
from schema.db import check_connection, make_engine, transaction
from schema.errors import AccuteError, AuthenticationError, DatabaseUnavailableError, InvalidInputError
from schema.migrate import require_current_schema
from schema.personal_data import PersonalDataVault

log = logging.getLogger("accute.orchestrator")

CHAT_ROLES = ("org_admin", "org_user")
ADMIN_ROLES = ("org_admin",)
OVERHEAD_HEADER = "x-accute-overhead-ms"
_STARTED = "accute.started"


class _Unexpected:
    """Pure ASGI middleware: an unexpected exception becomes a bare 500 and one log line.

    Without it the exception reached uvicorn, which logged the full traceback, SQL parameters
    included (one held a tenant's answer), whatever ``ACCUTE_DEBUG`` said. The traceback is logged
    only when ``debug`` is on.
    """

    def __init__(self, app: Any, debug: bool) -> None:
        self.app = app
        self.debug = debug

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.error(
                "unexpected %s on %s %s",
                type(exc).__name__,
                scope.get("method"),
                scope.get("path"),
                exc_info=self.debug,
            )
            if not started:
                body = b'{"error":"internal"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})


class _StartClock:
    """Pure ASGI middleware: stamps when a request reached the app (for the overhead header)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[_STARTED] = time.perf_counter()
        await self.app(scope, receive, send)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    keyring: KeyRing
    tokens: TokenService
    egress: EgressPolicy
    cascade: Cascade | None = None
    gate: SecurityGate | None = None
    """Zero trust, threat intelligence and rate limits (None when ACCUTE_ZERO_TRUST_ENABLED is off)."""
    security: "SecurityMonitor | None" = None
    """Anomaly detectors and the address/subject blocklist (None with ACCUTE_ANOMALY_DETECTION=false)."""
    block_sync: BlockSync | None = None
    """Carries blocks and resolutions between workers (None when both layers above are off)."""


def start_dms_watcher(services: Services) -> "asyncio.Task[None] | None":
    """The dead man's switch watcher as a background task of the app (``ACCUTE_DMS_WATCH_INTERVAL_S``)."""
    if services.settings.dms_watch_interval_s <= 0:
        return None
    from orchestrator.security.dms_actions import watch

    def fired(changed: list[dict[str, Any]]) -> None:
        if services.cascade is not None:
            for entry in changed:
                services.cascade.invalidate(uuid.UUID(entry["organization_id"]))

    interval = services.settings.dms_watch_interval_s
    return asyncio.create_task(watch(services.engine, services.keyring, interval, on_change=fired))


def build_services(settings: Settings, engine: Engine | None = None) -> Services:
    bound = engine or make_engine(settings)
    keyring = KeyRing(kek_provider(settings))
    egress = EgressPolicy.parse(settings.egress_allow)
    gate = (
        SecurityGate(bound, settings, vault=PersonalDataVault(keyring.kek))
        if settings.zero_trust_enabled
        else None
    )
    services = Services(settings, bound, keyring, TokenService(bound, keyring, settings), egress, gate=gate)
    if settings.anomaly_detection:
        services.security = build_monitor(settings, bound)
    if services.gate is not None or services.security is not None:
        services.block_sync = BlockSync(bound, settings, services.security, services.gate)
    return services


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    session_id: uuid.UUID | None = None
    workspace_id: uuid.UUID | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    request_id: str | None = Field(default=None, min_length=1, max_length=100)


class ChatResponse(BaseModel):
    content: str
    provider: str
    model_id: str
    is_fallback: bool
    input_tokens: int
    output_tokens: int
    latency_ms: int
    estimated_cost: float
    cache_hit: bool


class ErrorBody(BaseModel):
    """Every error: a code, and for all but 401/403 a one-line message saying what to do."""

    error: str
    message: str | None = None


#: Errors any route may answer (documented in the OpenAPI of every route).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request"},
    401: {"model": ErrorBody, "description": "Missing, invalid or expired bearer token"},
    403: {"model": ErrorBody, "description": "The token may not act on this organization"},
    404: {"model": ErrorBody, "description": "No such resource in this organization"},
    413: {"model": ErrorBody, "description": "Request body over ACCUTE_MAX_REQUEST_BODY_BYTES"},
    431: {"model": ErrorBody, "description": "Request headers over ACCUTE_MAX_REQUEST_HEADER_BYTES"},
}


class BillingRow(BaseModel):
    billing_period_start: str
    billing_period_end: str
    total_fallback_requests: int
    total_fallback_tokens: int
    total_cost_usd: str
    total_cost_exact_usd: str
    billing_model: str
    bundle_tokens_remaining: int | None
    invoice_status: str | None


#: The chat route's OpenAPI: what FastAPI would generate from a typed signature.
CHAT_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "org", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
        {"name": "agent_slug", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "x-request-id",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 100},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatBody.model_json_schema()}},
    },
    "security": [{"HTTPBearer": []}],
}


def _error_body(exc: AccuteError) -> dict[str, Any]:
    if exc.http_status in (401, 403):
        return {"error": exc.code}
    return {"error": exc.code, "message": exc.message}


def _hub_relay(settings: Settings, engine: Engine) -> AbstractAsyncContextManager[object]:
    """The hub outbox relay as a background task of the service, when a hub is configured."""
    if settings.hub_amqp_url is None and not settings.hub_url:
        return nullcontext()
    from orchestrator.hub.runtime import background

    return background(settings, engine)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The service; ``engine`` lets tests and the benchmark share a database."""
    settings = settings or Settings()
    services = build_services(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_upstream(
            settings.upstream_client,
            max_connections=settings.upstream_max_connections,
            max_per_origin=settings.upstream_max_per_origin,
            reserved_connections=settings.upstream_reserved_fallback,
            max_idle_per_origin=200,
            max_response_bytes=settings.provider_max_response_bytes,
            egress=services.egress,
            **({"trust_env": True} if settings.upstream_client == "httpx" else {}),
        )
        cache = make_cache(settings)
        vamn = VamnServer(WeightsStore(settings.weights_dir), settings.config_cache_ttl_s)
        cascade = Cascade(services.engine, settings, services.keyring, vamn, cache, client)
        services.cascade = cascade
        if services.gate is not None:
            await anyio.to_thread.run_sync(services.gate.start)
        if services.block_sync is not None:
            await anyio.to_thread.run_sync(services.block_sync.start)
        watcher = start_dms_watcher(services)  # the dead man's switch (issue 14)
        try:
            async with _hub_relay(settings, services.engine):
                yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher  # a tick under way finishes its transaction first
            # In-flight requests have finished: write what is queued, then let go of connections.
            await anyio.to_thread.run_sync(cascade.close)
            if services.block_sync is not None:
                await anyio.to_thread.run_sync(services.block_sync.close)
            if services.gate is not None:
                await services.gate.close()
            if services.security is not None and services.security.recorder is not None:
                await anyio.to_thread.run_sync(services.security.recorder.close)
            await client.aclose()
            if cache is not None:
                await cache.close()

    app = FastAPI(
        title="Accute FL inference cascade",
        version="0.1.0",
        description="Tenant LLMs → VAMN → billed fallback, with encrypted keys, exact usage and billing.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.services = services
    # The last added runs first. Size limits come before anything reads the request
    # (authentication included); the one-line 500 handler wraps them all (it must not see the
    # limit's own signal for an oversize body, which RequestLimits turns into 413 below it).
    app.add_middleware(_StartClock)
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_request_body_bytes,
        max_header_bytes=settings.max_request_header_bytes,
    )
    app.add_middleware(_Unexpected, debug=settings.debug)

    @app.exception_handler(AccuteError)
    async def accute_error(request: Request, exc: AccuteError) -> JSONResponse:
        headers = exc.headers or ({"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None)
        return JSONResponse(_error_body(exc), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        # Only the location and pydantic's message: never the submitted value (it may be a key).
        message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))
        return JSONResponse({"error": InvalidInputError.code, "message": message}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return JSONResponse({"error": "internal"}, status_code=500)

    guard = Guard(services)
    app.state.guard = guard
    authenticate = guard.authenticate

    AdminOrg = Annotated[uuid.UUID, Depends(guard.org_scope(ADMIN_ROLES))]
    Caller = Annotated[Principal, Depends(guard.principal)]

    def _sensitive_read(who: Principal, kind: str, rows: int, http: Request) -> None:
        if services.security is not None:
            services.security.sensitive_read(who, kind, rows, http.client.host if http.client else None)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The database is reachable and migrated")
    def readyz() -> dict[str, str]:
        # Anyone may call this: say what is wrong, never where the database is (its URL).
        try:
            check_connection(services.engine)
        except DatabaseUnavailableError:
            log.warning("readyz: the database is unreachable")
            raise DatabaseUnavailableError("the database is unreachable") from None
        try:
            require_current_schema(services.engine)
        except DatabaseUnavailableError:
            raise DatabaseUnavailableError(
                "the database schema is not current; run accute-fl db upgrade"
            ) from None
        return {"status": "ready"}

    @app.post("/v1/orgs/{org}/llm-configs", status_code=201, tags=["llm-configs"])
    def create_config(org: AdminOrg, body: configs.ConfigCreate) -> dict[str, Any]:
        """Add a provider config; ``api_key`` is stored encrypted and never returned."""
        if services.gate is not None:
            services.gate.check_endpoint(body.api_endpoint)
        with transaction(services.engine) as session:
            result = configs.as_dict(configs.create(session, services.keyring, org, body, services.egress))
        _invalidate(org)
        return result

    @app.get("/v1/orgs/{org}/llm-configs", tags=["llm-configs"])
    def list_configs(org: AdminOrg) -> list[dict[str, Any]]:
        with transaction(services.engine) as session:
            return [configs.as_dict(r) for r in configs.list_for(session, org)]

    @app.get("/v1/orgs/{org}/llm-configs/{config_id}", tags=["llm-configs"])
    def get_config(org: AdminOrg, config_id: str) -> dict[str, Any]:
        with transaction(services.engine) as session:
            return configs.as_dict(configs.get(session, org, config_id))

    @app.patch("/v1/orgs/{org}/llm-configs/{config_id}", tags=["llm-configs"])
    def update_config(org: AdminOrg, config_id: str, body: configs.ConfigUpdate) -> dict[str, Any]:
        if services.gate is not None:
            services.gate.check_endpoint(body.api_endpoint)
        with transaction(services.engine) as session:
            row = configs.update(session, services.keyring, org, config_id, body, services.egress)
            result = configs.as_dict(row)
        _invalidate(org)
        if services.cascade is not None:  # the admin changed it: its open circuit no longer applies
            services.cascade.breakers.reset(row.id)
        return result

    @app.delete("/v1/orgs/{org}/llm-configs/{config_id}", status_code=204, tags=["llm-configs"])
    def delete_config(org: AdminOrg, config_id: str) -> Response:
        with transaction(services.engine) as session:
            configs.delete(session, org, config_id)
        _invalidate(org)
        return Response(status_code=204)

    @app.post(
        "/v1/orgs/{org}/agents/{agent_slug}/chat",
        tags=["chat"],
        response_model=ChatResponse,
        openapi_extra=CHAT_OPENAPI,
        responses={
            200: {
                "headers": {
                    OVERHEAD_HEADER: {
                        "description": "Milliseconds the service added: time in the service minus "
                        "the time spent waiting for models.",
                        "schema": {"type": "number"},
                    }
                }
            }
        },
    )
    async def chat(http: Request) -> Response:
        """Answer through the cascade; a repeated ``request_id`` (or X-Request-Id) is answered once.

        The hot route reads its request itself (one bearer token, two path parameters, one
        header, a JSON body) instead of through FastAPI's parameter machinery, which cost more
        than the rest of the service together; the checks and errors are the same: 401, 403,
        then 422 ``invalid_input``.
        """
        assert services.cascade is not None
        started = http.scope.get(_STARTED) or time.perf_counter()
        scheme, token = get_authorization_scheme_param(http.headers.get("authorization"))
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("unauthenticated")
        who = await authenticate(token, http)
        try:
            org = uuid.UUID(http.path_params["org"])
        except ValueError:
            raise InvalidInputError("org: Input should be a valid UUID") from None
        guard.authorize(who, org, CHAT_ROLES, http.client.host if http.client else None, http.url.path)
        x_request_id = http.headers.get("x-request-id")
        if x_request_id is not None and len(x_request_id) > 100:
            raise InvalidInputError("x-request-id: String should have at most 100 characters")
        try:
            body = ChatBody.model_validate_json(await http.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None
        client_id = body.request_id or x_request_id
        request = ChatRequest(
            organization_id=org,
            agent_slug=http.path_params["agent_slug"],
            message=body.message,
            request_id=client_id or accounting.new_id().hex,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            session_id=body.session_id,
            workspace_id=body.workspace_id,
            client_request_id=client_id is not None,
            caller=caller_key(who.subject),
            user_id=who.user_id,
        )
        timing = Timing()
        answer = await services.cascade.chat(request, timing)
        if answer["is_fallback"] and services.security is not None:
            services.security.fallback_tokens(org, int(answer["input_tokens"]) + int(answer["output_tokens"]))
        content = ChatResponse.model_validate(answer).model_dump_json()
        overhead_ms = (time.perf_counter() - started - timing.upstream_s) * 1000
        return Response(
            content,
            media_type="application/json",
            headers={OVERHEAD_HEADER: f"{max(overhead_ms, 0.0):.3f}"},
        )

    @app.get("/v1/orgs/{org}/usage", tags=["accounting"])
    async def usage(
        org: AdminOrg,
        who: Caller,
        http: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """The organization's most recent ``llm_usage_log`` rows (every attempt, cache hits included)."""

        def read() -> list[dict[str, Any]]:
            with transaction(services.engine) as session:
                return accounting.usage_rows(session, org, limit)

        rows = await anyio.to_thread.run_sync(read)
        _sensitive_read(who, "usage", len(rows), http)
        return rows

    @app.get("/v1/orgs/{org}/billing", tags=["accounting"], response_model=list[BillingRow])
    async def billing(org: AdminOrg, who: Caller, http: Request) -> list[dict[str, Any]]:
        """The organization's ``fallback_billing`` rows, newest period first."""

        def read() -> list[dict[str, Any]]:
            with transaction(services.engine) as session:
                return accounting.billing_rows(session, org)

        rows = await anyio.to_thread.run_sync(read)
        _sensitive_read(who, "billing", len(rows), http)
        return rows

    openai_compat.install(app, services, authenticate)
    include_routers(app, services, guard)
    metrics.install(app, services)

    def _invalidate(org: uuid.UUID) -> None:
        if services.cascade is not None:
            services.cascade.invalidate(org)

    # The router tries routes in order (the docs routes come first): the hot routes go first (the
    # chat route, then the OpenAI door's completions).
    routes = app.router.routes
    routes.insert(
        0, routes.pop(next(i for i, r in enumerate(routes) if getattr(r, "endpoint", None) is chat))
    )
    routes.insert(
        1,
        routes.pop(
            next(i for i, r in enumerate(routes) if getattr(r, "path", None) == openai_compat.COMPLETIONS)
        ),
    )
    return app


def create_served_app() -> FastAPI:
    """``create_app()`` as ``accute-fl serve`` runs it, in a long-lived process (each worker).

    The objects made by the imports and the app (they live as long as the process) are moved out
    of the cyclic garbage collector's reach (``gc.freeze``), and the youngest generation is
    collected after 10 000 net allocations instead of 700. Under load the defaults spent about a
    sixth of the time in the collector, with pauses up to 90 ms (BENCHMARKS.md).
    """
    app = create_app()
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    return app
