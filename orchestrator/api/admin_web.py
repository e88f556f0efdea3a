"""The admin console at ``/admin``: server-rendered pages over the admin view functions.

Sign-in takes a bearer token in a form body (never in a URL) and keeps it in a session cookie
sealed with the KEK (``orchestrator.web.session`` says why and what that costs); the cookie is
HttpOnly, SameSite=Strict, Path=/admin, and Secure over https or with
``ACCUTE_ADMIN_COOKIE_SECURE``. Only ``platform_admin`` and ``org_admin`` tokens may sign in; an org
admin sees its own organization only (a probe of another one is refused 403 and logged). Every
state-changing form (sign-out, promote, roll back) carries the session's CSRF token and is refused
403 without it. Every response, errors and the 404 of unknown ``/admin`` paths included, carries
the console's Content-Security-Policy and companions (``orchestrator.web.render``).

Pages are not part of the OpenAPI schema (they answer HTML); the JSON admin API is.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the endpoints' annotations.
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio
import jwt
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from markupsafe import Markup
from starlette.responses import RedirectResponse, Response

from orchestrator.api.deps import Guard
from orchestrator.auth import Principal
from orchestrator.web import charts, render, views
from orchestrator.web.session import (
    COOKIE,
    COOKIE_PATH,
    LOGIN_COOKIE,
    WebSession,
    new_session,
    seal,
    unseal,
)
from privacy.ledger import NEAR_CAP_SHARE, LedgerPolicy
from schema import directory, registry
from schema.db import transaction
from schema.errors import (
    AccuteError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
)

log = logging.getLogger("accute.orchestrator.admin")

ADMIN_ROLES = frozenset({"platform_admin", "org_admin"})
LOGIN_TTL_S = 600
_MESSAGES = {
    401: ("Sign in", "Your session has ended; sign in again."),
    403: ("Forbidden", "Your token may not see or change this."),
    404: ("Not found", "There is no such page or record."),
}


@dataclass(frozen=True)
class Viewer:
    """The signed-in admin: the token's principal and the session's CSRF token."""

    principal: Principal
    session: WebSession
    organization: str = ""

    @property
    def platform(self) -> bool:
        return "platform_admin" in self.principal.roles

    @property
    def scope(self) -> uuid.UUID | None:
        """None for a platform admin, else the one organization the viewer may see."""
        return None if self.platform else self.principal.organization_id

    @property
    def role(self) -> str:
        return "platform_admin" if self.platform else "org_admin"

    @property
    def csrf(self) -> str:
        return self.session.csrf


def _error_page(request: Request, status: int, message: str | None = None) -> Response:
    heading, default = _MESSAGES.get(status, ("Cannot do that", "The request cannot be carried out."))
    return render.page(
        "error.html", status_code=status, status=status, heading=heading, message=message or default
    )


class AdminRoute(APIRoute):
    """Errors become HTML pages (a lapsed session: back to sign-in), and every response gets the
    console's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except AuthenticationError:
                response = RedirectResponse("/admin/login", status_code=303)
                response.delete_cookie(COOKIE, path=COOKIE_PATH)
            except PermissionDeniedError as exc:
                log.warning(
                    "admin console: %s %s refused to %s (%s)",
                    request.method,
                    request.url.path,
                    getattr(request.state, "admin_subject", "an unsigned visitor"),
                    exc.message[:200],
                )
                response = _error_page(request, 403, None if exc.message == "forbidden" else exc.message)
            except AccuteError as exc:
                response = _error_page(request, exc.http_status, exc.message)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ()))
                response = _error_page(request, 422, f"{where}: {first.get('msg', 'invalid')}")
            return render.secure(response)

        return handle


def _cookie_secure(request: Request, always: bool) -> bool:
    return always or request.url.scheme == "https"


def _token_expiry(token: str) -> float:
    """The ``exp`` of a token ``Guard.authenticate`` has just verified."""
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def _epsilon(value: Any) -> float:
    return float(value)


def _budget_chart(detail: Any) -> dict[str, Markup]:
    """One ε-after-each-event chart per unit, the unit's cap dashed."""
    result: dict[str, Markup] = {}
    for status in detail.budgets:
        events = [e for e in detail.events if e.unit == status.unit]
        # Event 0 is the empty ledger (epsilon 0), so the first charge shows as a step.
        points = [(0.0, 0.0)] + [(float(n), _epsilon(e.epsilon_after)) for n, e in enumerate(events, start=1)]
        result[status.unit] = Markup(
            charts.line_chart(
                points,
                title=f"epsilon ({status.unit}) of {detail.organization} {detail.model_type}",
                x_label="ledger event (charge order)",
                y_label="epsilon",
                reference=status.epsilon_cap,
                reference_label="cap",
            )
        )
    return result


def build(services: Any, guard: Guard) -> APIRouter:
    router = APIRouter(prefix="/admin", route_class=AdminRoute, include_in_schema=False)
    kek = services.keyring.kek
    policy = LedgerPolicy.from_settings(services.settings)
    always_secure = bool(services.settings.admin_cookie_secure)

    async def viewer(request: Request) -> Viewer:
        session = unseal(kek, request.cookies.get(COOKIE))
        if session is None:
            raise AuthenticationError("unauthenticated")
        who = await guard.authenticate(session.token)
        request.state.admin_subject = who.subject
        if not ADMIN_ROLES & who.roles:
            raise PermissionDeniedError("forbidden")
        return Viewer(who, session)

    Admin = Annotated[Viewer, Depends(viewer)]

    def named(admin: Viewer, session: Any) -> Viewer:
        """The viewer with its organization's name, for the header."""
        if admin.principal.organization_id is None:
            return admin
        name = directory.get_organization(session, admin.principal.organization_id).name
        return Viewer(admin.principal, admin.session, name)

    async def checked_form(request: Request, admin: Viewer) -> dict[str, str]:
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not admin.session.csrf_ok(fields.get("csrf")):
            raise PermissionDeniedError(
                "the form's CSRF token is missing or wrong; reload the page and retry"
            )
        return fields

    # -- sign in and out -----------------------------------------------------------------------
    @router.get("/login")
    def login_form(request: Request) -> Response:
        pair = new_session("", time.time() + LOGIN_TTL_S).csrf
        response = render.page("login.html", login_csrf=pair)
        response.set_cookie(
            LOGIN_COOKIE,
            pair,
            max_age=LOGIN_TTL_S,
            path="/admin/login",
            secure=_cookie_secure(request, always_secure),
            httponly=True,
            samesite="strict",
        )
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        token = form.get("token")
        submitted = form.get("csrf")
        expected = request.cookies.get(LOGIN_COOKIE)
        if not (isinstance(submitted, str) and expected and WebSession("", expected, 0).csrf_ok(submitted)):
            raise PermissionDeniedError("the sign-in form expired; reload it and sign in again")
        token = token.strip() if isinstance(token, str) else ""
        try:
            if not token or len(token) > 2500:
                raise AuthenticationError("unauthenticated")
            who = await guard.authenticate(token)
        except AuthenticationError:
            return render.page(
                "login.html",
                status_code=401,
                login_csrf=submitted,
                error="That token is not valid here (expired, mistyped, or issued by another service).",
            )
        if not ADMIN_ROLES & who.roles:
            log.warning("admin console: sign-in refused to %s (roles %s)", who.subject, sorted(who.roles))
            raise PermissionDeniedError("the admin console needs a platform_admin or org_admin token")
        expires_at = _token_expiry(token)
        session = new_session(token, expires_at)
        signed_in = RedirectResponse("/admin/budgets", status_code=303)
        signed_in.set_cookie(
            COOKIE,
            seal(kek, session),
            max_age=max(1, int(expires_at - time.time())),
            path=COOKIE_PATH,
            secure=_cookie_secure(request, always_secure),
            httponly=True,
            samesite="strict",
        )
        signed_in.delete_cookie(LOGIN_COOKIE, path="/admin/login")
        log.info("admin console: %s signed in", who.subject)
        return signed_in

    @router.post("/logout")
    async def logout(request: Request, admin: Admin) -> Response:
        await checked_form(request, admin)
        response = RedirectResponse("/admin/login", status_code=303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response

    @router.get("")
    @router.get("/")
    def home() -> Response:
        return RedirectResponse("/admin/budgets", status_code=303)

    # -- budgets -------------------------------------------------------------------------------
    @router.get("/budgets")
    def budgets_page(
        admin: Admin,
        org: Annotated[str | None, Query(max_length=200)] = None,
        model_type: Annotated[str | None, Query(max_length=50)] = None,
        status: Annotated[str | None, Query(max_length=20)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        with transaction(services.engine) as session:
            me = named(admin, session)
            organization = views.organization_id(session, org) if org else None
            page = views.budgets(
                session,
                policy,
                admin.scope,
                organization_id=organization,
                model_type=model_type or None,
                status=status or None,
                limit=limit,
                offset=offset,
            )
        filters = {"org": org or "", "model_type": model_type or "", "status": status or ""}

        def url(at: int) -> str:
            query = {k: v for k, v in filters.items() if v} | {"limit": str(limit), "offset": str(at)}
            return "/admin/budgets?" + urlencode(query)

        return render.page(
            "budgets.html",
            viewer=me,
            section="budgets",
            page=page,
            filters=filters,
            statuses=views.BUDGET_STATUSES,
            accountant=policy.accountant,
            near_cap_percent=round(NEAR_CAP_SHARE * 100),
            prev_url=url(max(0, offset - limit)) if offset > 0 else None,
            next_url=url(offset + limit) if offset + limit < page.total else None,
        )

    @router.get("/budgets/{org}/{model_type}")
    def budget_page(admin: Admin, org: uuid.UUID, model_type: str) -> Response:
        with transaction(services.engine) as session:
            me = named(admin, session)
            detail = views.budget(session, policy, admin.scope, org, model_type)
        return render.page(
            "budget.html", viewer=me, section="budgets", detail=detail, charts=_budget_chart(detail)
        )

    # -- runs ----------------------------------------------------------------------------------
    @router.get("/runs")
    def runs_page(
        admin: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        with transaction(services.engine) as session:
            me = named(admin, session)
            page = views.runs(session, admin.scope, limit=limit, offset=offset)
        return render.page("runs.html", viewer=me, section="runs", runs=page.items, page=page)

    @router.get("/runs/{name}")
    def run_page(admin: Admin, name: str) -> Response:
        with transaction(services.engine) as session:
            me = named(admin, session)
            detail = views.run(session, admin.scope, name)
        points = [(float(r.round), float(r.metric)) for r in detail.rounds if r.metric is not None]
        metric_name = next((r.metric_name for r in detail.rounds if r.metric_name), "metric")
        chart = charts.line_chart(
            points,
            title=f"{metric_name} of run {detail.run.name} per round",
            x_label="round",
            y_label=metric_name,
        )
        return render.page("run.html", viewer=me, section="runs", detail=detail, metric_chart=Markup(chart))

    # -- registry ------------------------------------------------------------------------------
    def registry_page(admin: Viewer, notice: str | None = None) -> Response:
        with transaction(services.engine) as session:
            me = named(admin, session)
            heads = views.registry_heads(session, admin.scope)
        return render.page(
            "registry.html",
            viewer=me,
            section="registry",
            heads=heads,
            rollback_target=views.rollback_targets(heads),
            notice=notice,
        )

    @router.get("/registry")
    def registry_list(
        admin: Admin,
        promoted: uuid.UUID | None = None,
        rolled_back: uuid.UUID | None = None,
    ) -> Response:
        """The registry; after a change, a notice built from the registry row (never from text in
        the URL, which anyone could write)."""
        notice = None
        changed = promoted or rolled_back
        if changed is not None:
            with transaction(services.engine) as session:
                row = registry.get(session, changed)
                label = f"{row.model_name} {row.model_version}"
                serving = row.is_active
                head = row.head_type
            if serving:
                verb = "now serves" if promoted else "serves again"
                notice = f"{label} {verb} the {head} head."
        return registry_page(admin, notice)

    def serve_now(head_type: str) -> None:
        """This process's cascade serves the new active version at its next request (other
        workers within ``ACCUTE_CONFIG_CACHE_TTL_S``), as the admin API's promotion does."""
        if services.cascade is not None:
            services.cascade.vamn.forget(head_type)

    def platform_only(admin: Viewer) -> None:
        if not admin.platform:
            raise PermissionDeniedError("only a platform admin may change the registry")

    @router.get("/registry/{model_id}/promote")
    def confirm_promote(admin: Admin, model_id: uuid.UUID) -> Response:
        platform_only(admin)
        with transaction(services.engine) as session:
            row = registry.get(session, model_id)
            label = f"{row.model_name} {row.model_version}"
            head = row.head_type
            current = registry.active_for_head(session, head)
            now = "nothing" if current is None else f"{current.model_name} {current.model_version}"
        return render.page(
            "confirm.html",
            viewer=admin,
            section="registry",
            heading=f"Promote {label}?",
            question=f"The {head} head serves {now} today; after this it serves {label}, "
            "and the current version is retired (recorded in the audit log).",
            action=f"/admin/registry/{model_id}/promote",
            button=f"Promote {label}",
            cancel="/admin/registry",
        )

    @router.post("/registry/{model_id}/promote")
    async def promote(request: Request, admin: Admin, model_id: uuid.UUID) -> Response:
        await checked_form(request, admin)
        platform_only(admin)

        def change() -> str:
            with transaction(services.engine) as session:
                return registry.promote(session, model_id, by=admin.principal.subject).head_type

        serve_now(await anyio.to_thread.run_sync(change))
        log.info("admin console: %s promoted model %s", admin.principal.subject, model_id)
        return RedirectResponse(f"/admin/registry?promoted={model_id}", status_code=303)

    @router.get("/registry/heads/{head}/rollback")
    def confirm_rollback(admin: Admin, head: str) -> Response:
        platform_only(admin)
        with transaction(services.engine) as session:
            current = registry.active_for_head(session, head)
        now = "nothing" if current is None else f"{current.model_name} {current.model_version}"
        return render.page(
            "confirm.html",
            viewer=admin,
            section="registry",
            heading=f"Roll back the {head} head?",
            question=f"The {head} head serves {now} today; after this it serves the version that "
            "served before it, and the current one is retired (recorded in the audit log).",
            action=f"/admin/registry/heads/{head}/rollback",
            button="Roll back",
            cancel="/admin/registry",
        )

    @router.post("/registry/heads/{head}/rollback")
    async def rollback(request: Request, admin: Admin, head: str) -> Response:
        await checked_form(request, admin)
        platform_only(admin)

        def change() -> uuid.UUID:
            with transaction(services.engine) as session:
                return registry.rollback(session, head, by=admin.principal.subject).id

        restored = await anyio.to_thread.run_sync(change)
        serve_now(head)
        log.info("admin console: %s rolled back the %s head", admin.principal.subject, head)
        return RedirectResponse(f"/admin/registry?rolled_back={restored}", status_code=303)

    # -- consent, requests, alerts ----------------------------------------------------------------
    @router.get("/consent")
    def consent_page(
        admin: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        with transaction(services.engine) as session:
            me = named(admin, session)
            organizations, types, requests, names = views.consent(
                session, admin.scope, limit=limit, offset=offset
            )
        return render.page(
            "consent.html",
            viewer=me,
            section="consent",
            organizations=organizations,
            consent_types=types,
            requests=requests,
            names=names,
        )

    @router.get("/alerts")
    def alerts_page(
        admin: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        with transaction(services.engine) as session:
            me = named(admin, session)
            page, names = views.alerts(session, admin.scope, limit=limit, offset=offset)
        return render.page(
            "alerts.html",
            viewer=me,
            section="alerts",
            alerts=page,
            names=names,
            near_cap_percent=round(NEAR_CAP_SHARE * 100),
        )

    # -- files and the rest ----------------------------------------------------------------------
    @router.get("/static/{name}")
    def static(name: str) -> Response:
        found = render.static_file(name)
        if found is None:
            raise NotFoundError(f"no static file {name[:100]}")
        body, media = found
        response = Response(body, media_type=media)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    @router.api_route("/{rest:path}", methods=["GET", "POST"])
    def unknown(request: Request, rest: str) -> Response:
        return _error_page(request, 404)

    return router
