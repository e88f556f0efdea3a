"""`accute-fl security anomalies | resolve`: review the anomalies the detectors recorded."""

from __future__ import annotations

import uuid

import typer

from orchestrator.cli.context import load_settings, organization_id, ready_engine
from orchestrator.cli.output import emit
from schema import security_anomalies
from schema.db import transaction
from schema.validation import parse_uuid

app = typer.Typer(help="Security anomalies: review and resolve.", no_args_is_help=True)

COLUMNS = (
    "id",
    "created_at",
    "organization_id",
    "anomaly_type",
    "severity",
    "subject",
    "count",
    "auto_blocked",
    "status",
    "resolution",
)


@app.command("anomalies")
def anomalies(
    status: str = typer.Option("open", "--status", help="open, resolved or all."),
    org: str | None = typer.Option(
        None, "--org", help="Only this organization's (id or name).", callback=organization_id
    ),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with each row's details)."),
) -> None:
    """List security anomalies, newest first (credential stuffing, privilege escalation, volume
    spikes, exfiltration, unusual hours, federation outliers...)."""
    organization = parse_uuid(org, "organization id") if org else None
    with transaction(ready_engine()) as session:
        rows = [
            security_anomalies.as_dict(r)
            for r in security_anomalies.list_rows(session, organization, status, limit)
        ]
    emit(rows, as_json, "Security anomalies", COLUMNS)


@app.command("resolve")
def resolve(
    anomaly_id: str = typer.Argument(..., help="The anomaly's id (see `accute-fl security anomalies`)."),
    resolution: str = typer.Option(..., "--resolution", help="Up to 50 characters, e.g. false_positive."),
    by: str = typer.Option(
        ..., "--by", help="Who reviewed it: a name, or a user id (recorded as reviewed_by)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Close an anomaly (audited); an auto-blocked subject is no longer refused, by running
    servers too (within ACCUTE_SECURITY_CHANGE_POLL_S; at once with ACCUTE_REDIS_URL)."""
    reviewer_user: uuid.UUID | None = None
    try:
        reviewer_user = uuid.UUID(by)
    except ValueError:
        reviewer_user = None
    with transaction(ready_engine()) as session:
        if reviewer_user is not None:
            from schema.models import User

            if session.get(User, reviewer_user) is None:
                reviewer_user = None
        row = security_anomalies.resolve(
            session, anomaly_id, None, resolution=resolution, reviewer=by, reviewer_user_id=reviewer_user
        )
        result = security_anomalies.as_dict(row)
    # Committed (the security generation moved): running workers lift the block within their poll
    # interval; with Redis, at once.
    from orchestrator.security.block_sync import publish

    publish(load_settings())
    emit(result, as_json, "Resolved", COLUMNS)
