"""Templates and response headers of the admin console.

Every ``/admin`` response carries ``SECURITY_HEADERS``: a Content-Security-Policy that loads
nothing from anywhere but this service and runs no script at all (the pages need none: charts are
SVG drawn on the server, confirmations are pages), forbids framing (clickjacking) and posting forms
elsewhere; ``nosniff``; no Referer leaves (URLs name organizations); and ``no-store`` because pages
hold tenants' data.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse, Response

from orchestrator.web import charts

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def epsilon_text(value: Any) -> str:
    """ε as the page prints it: 6 significant digits, ``inf`` after a non-private release."""
    if value is None:
        return ""
    number = float(value)
    if math.isinf(number):
        return "inf"
    return f"{number:.6g}"


def when_text(value: str | None) -> str:
    """An ISO timestamp as ``2026-11-30 00:21:57`` (UTC, as stored); '' for None."""
    if not value:
        return ""
    return value.replace("T", " ")[:19]


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(WEB_DIR / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["eps"] = epsilon_text
    env.filters["when"] = when_text
    env.globals["bar"] = lambda spent, cap, status: Markup(charts.share_bar(float(spent), float(cap), status))
    return env


def secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        if name == "Cache-Control" and name in response.headers:
            continue  # static files say they may be cached
        response.headers[name] = value
    return response


def page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("viewer", None)
    context.setdefault("notice", None)
    html = environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code)


def static_file(name: str) -> tuple[bytes, str] | None:
    """A file of ``static/`` by its bare name (no folders, no dot files), with its media type."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    path = STATIC_DIR / name
    media = STATIC_TYPES.get(path.suffix)
    if media is None or not path.is_file():
        return None
    return path.read_bytes(), media
