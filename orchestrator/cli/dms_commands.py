"""`accute-fl dms configure | show | heartbeat | watch | reverse`: the dead man's switch.

The CLI is the operator's (a platform admin at the database): it may also reverse a firing. The
watcher runs inside `serve` too (``ACCUTE_DMS_WATCH_INTERVAL_S``); `dms watch` is for deployments
that run it apart, or from cron with ``--once``.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import typer
from pydantic import ValidationError

from orchestrator.cli.context import load_settings, organization_id, ready_engine
from orchestrator.cli.output import emit, emit_json
from schema.db import transaction
from schema.errors import InvalidInputError
from schema.timeutil import as_utc, utcnow
from schema.validation import parse_uuid

app = typer.Typer(help="The dead man's switch of organizations.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")
ORG_OPTION = typer.Option(..., "--org", help="Organization id or name.", callback=organization_id)
STATUS_COLUMNS = ("organization_id", "state", "last_heartbeat", "doom_timer_started_at", "next_deadline")
#: Evaluate as if it were this UTC time (tests and dry runs of a configuration); hidden.
NOW_OPTION = typer.Option(None, "--now", hidden=True, help="Evaluate at this ISO 8601 UTC time.")
CLI_ACTOR = "cli"


def _now(value: str | None) -> datetime:
    if value is None:
        return utcnow()
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise InvalidInputError(
            f"--now '{value}' is not an ISO 8601 time, e.g. 2026-11-30T12:00:00"
        ) from None


@app.command("configure")
def configure(
    org: str = ORG_OPTION,
    admin_user: str = typer.Option(..., "--admin-user", help="The user whose heartbeat keeps it armed."),
    interval_hours: int = typer.Option(24, "--interval-hours", help="Hours between heartbeats."),
    grace_hours: int = typer.Option(48, "--grace-hours", help="Hours of doom timer before it fires."),
    action: list[str] = typer.Option(
        [], "--action", help="An action when it fires (repeat); default all of them."
    ),
    contact: list[str] = typer.Option([], "--contact", help="An escalation contact's user id (repeat)."),
    recovery_instructions: str | None = typer.Option(None, "--recovery-instructions"),
    disable: bool = typer.Option(False, "--disable", help="Keep the configuration but switch it off."),
    now: str | None = NOW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create or replace an organization's switch (counts as a heartbeat)."""
    from orchestrator.security import dms_actions
    from orchestrator.security.dead_man_switch import ACTIONS, SwitchSettings

    try:
        settings = SwitchSettings(
            admin_user_id=parse_uuid(admin_user, "admin user id"),
            heartbeat_interval_hours=interval_hours,
            grace_period_hours=grace_hours,
            actions=list(action) or list(ACTIONS),
            escalation_contacts=[parse_uuid(c, "contact user id") for c in contact],
            recovery_instructions=recovery_instructions,
            is_active=not disable,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInputError(f"{where}: {first.get('msg', 'invalid')}") from None
    at = _now(now)
    with transaction(ready_engine()) as session:
        dms_actions.configure(session, uuid.UUID(org), settings, now=at)
        result = dms_actions.status(session, uuid.UUID(org), at)
    emit(result, as_json, "Dead man's switch configured", STATUS_COLUMNS)


@app.command("show")
def show(org: str = ORG_OPTION, now: str | None = NOW_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The switch's configuration and its state now."""
    from orchestrator.security import dms_actions

    with transaction(ready_engine()) as session:
        result = dms_actions.status(session, uuid.UUID(org), _now(now))
    emit(result, as_json, "Dead man's switch", STATUS_COLUMNS)


@app.command("heartbeat")
def heartbeat(org: str = ORG_OPTION, now: str | None = NOW_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The organization's admin is alive: restart the interval, stop a running doom timer."""
    from orchestrator.security import dms_actions

    with transaction(ready_engine()) as session:
        result = dms_actions.heartbeat(session, uuid.UUID(org), now=_now(now))
    emit(result, as_json, "Heartbeat recorded", STATUS_COLUMNS)


@app.command("watch")
def watch(
    once: bool = typer.Option(False, "--once", help="Check every switch once and exit."),
    interval_s: float = typer.Option(60.0, "--interval-s", min=0.1, help="Seconds between checks."),
    now: str | None = NOW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Start doom timers and fire due switches (pause training, disable providers and fallback,
    rotate the data key, notify contacts), every ``--interval-s`` seconds until stopped. The key
    rotation needs the service's KEK on this host (``ACCUTE_KEK_FILE`` or PKCS#11)."""
    from orchestrator.keys import KeyRing, configured_kek
    from orchestrator.security import dms_actions

    engine = ready_engine()
    # Never a new KEK here: without the service's, a firing's key rotation fails (audited) and
    # the other actions still apply.
    kek = configured_kek(load_settings())
    keyring = KeyRing(kek) if kek is not None else None
    while True:
        changed = dms_actions.tick(engine, keyring, _now(now))
        if once:
            if as_json:
                emit_json(changed)
            else:
                emit(
                    [{"organization_id": c["organization_id"], "state": c["state"]} for c in changed],
                    False,
                    "Switches changed",
                    ("organization_id", "state"),
                )
            return
        for entry in changed:
            typer.echo(f"{entry['organization_id']}: {entry['state']}", err=True)
        time.sleep(interval_s)


@app.command("reverse")
def reverse(org: str = ORG_OPTION, now: str | None = NOW_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Lift a fired switch's restrictions and re-arm it (the rotated data key stays rotated)."""
    from orchestrator.security import dms_actions

    with transaction(ready_engine()) as session:
        result = dms_actions.reverse(session, uuid.UUID(org), now=_now(now), by=CLI_ACTOR)
    emit(result, as_json, "Dead man's switch reversed", ("organization_id", "reversed", "undone", "kept"))
