"""`accute-fl serve`, `accute-fl token issue` and `accute-fl keys rotate-*`: the inference service."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NamedTuple

import typer

from orchestrator.cli.context import load_settings, organization_id, ready_engine
from orchestrator.cli.output import emit
from schema.db import transaction
from schema.validation import parse_uuid

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from orchestrator.auth import TokenService
    from orchestrator.keys import KeyRing

token_app = typer.Typer(help="Bearer tokens for the HTTP service.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Key rotation (KEK, organization data keys, token signing key).", no_args_is_help=True
)
JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")


def uvicorn_options(host: str, port: int, workers: int, log_level: str, access_log: bool) -> dict[str, Any]:
    """uvicorn's arguments for the service (uvloop, httptools with a cap on request heads).

    Proxy headers are believed only from ``ACCUTE_FORWARDED_ALLOW_IPS`` (uvicorn's own default
    trusts 127.0.0.1, which let any local client claim another address).
    """
    from orchestrator.http_protocol import LimitedHttpToolsProtocol

    proxies = load_settings().forwarded_allow_ips.strip()

    return {
        "app": "orchestrator.service:create_served_app",
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "loop": "uvloop",
        "http": LimitedHttpToolsProtocol,
        "log_level": log_level,
        "access_log": access_log,
        "backlog": 4096,
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
    }


class KeyServices(NamedTuple):
    engine: Engine
    keyring: KeyRing
    tokens: TokenService


def _services() -> KeyServices:
    """The keyring and token service as ``orchestrator.service.build_services`` makes them, without
    the HTTP stack: ``token`` and ``keys`` commands do not import FastAPI."""
    from orchestrator.auth import TokenService
    from orchestrator.keys import KeyRing, kek_provider

    settings, bound = load_settings(), ready_engine()
    keyring = KeyRing(kek_provider(settings))
    return KeyServices(bound, keyring, TokenService(bound, keyring, settings))


def run_server(
    host: str, port: int, workers: int = 1, log_level: str = "info", access_log: bool = False
) -> None:
    """uvicorn on uvloop + httptools, ``workers`` processes each running ``create_served_app()``.

    Each worker process has its own rate-limit windows, circuit breakers, config and token caches
    and accounting writer; usage, billing and idempotency are exact across workers (the database
    decides), but a config's rpm/tpm limit is enforced per process (N workers may send up to N
    times the limit) and a circuit opens per process.

    With more than one worker this process becomes ``python -m orchestrator.served`` (``exec``,
    same pid, same signals), so that the spawned workers do not re-import the whole CLI
    (``orchestrator.served`` says why).
    """
    if workers > 1:
        import os

        args = [host, str(port), str(workers), log_level, "1" if access_log else "0"]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "orchestrator.served", *args])
    import uvicorn

    uvicorn.run(**uvicorn_options(host, port, workers, log_level, access_log))


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Worker processes; rate limits and circuit breakers are per process.",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log one line per HTTP request."),
) -> None:
    """Run the HTTP service (OpenAPI at /docs and /openapi.json)."""
    ready_engine()  # fail fast, in one line, when the database is unusable
    run_server(host, port, workers, access_log=access_log)


@token_app.command("issue")
def token_issue(
    role: str = typer.Option(..., "--role", help="platform_admin, org_admin, org_user or node."),
    org: str | None = typer.Option(
        None,
        "--org",
        help="Organization id or name (every role but platform_admin).",
        callback=organization_id,
    ),
    ttl: str = typer.Option("15m", "--ttl", help="Lifetime: seconds or 15m, 2h, 1d."),
    subject: str | None = typer.Option(None, "--subject", help="The token's 'sub' claim."),
) -> None:
    """Print a signed token (the last line of stdout)."""
    from orchestrator.auth import parse_ttl

    services = _services()
    token = services.tokens.issue(role=role, organization_id=org, subject=subject, ttl_s=parse_ttl(ttl))
    sys.stdout.write(token + "\n")


@keys_app.command("rotate-kek")
def rotate_kek(as_json: bool = JSON_OPTION) -> None:
    """New key-encryption key version; every data key and signing key is re-wrapped under it."""
    services = _services()
    with transaction(services.engine) as session:
        version = services.keyring.rotate_kek(session)
    emit({"kek_version": version}, as_json, "KEK rotated", ("kek_version",))


@keys_app.command("rotate-org")
def rotate_org(
    org: str = typer.Option(..., "--org", help="Organization id or name.", callback=organization_id),
    as_json: bool = JSON_OPTION,
) -> None:
    """New data key for one organization; its provider API keys are re-encrypted under it."""
    services = _services()
    with transaction(services.engine) as session:
        version = services.keyring.rotate_data_key(session, parse_uuid(org, "organization id"))
    emit(
        {"organization_id": org, "data_key_version": version},
        as_json,
        "Data key rotated",
        ("organization_id", "data_key_version"),
    )


@keys_app.command("rotate-signing")
def rotate_signing(as_json: bool = JSON_OPTION) -> None:
    """New token signing key; tokens signed by the old one stay valid until they expire."""
    services = _services()
    with transaction(services.engine) as session:
        kid = services.tokens.rotate_signing_key(session)
    emit({"kid": kid}, as_json, "Signing key rotated", ("kid",))
