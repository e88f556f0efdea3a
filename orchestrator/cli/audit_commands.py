"""`accute-fl audit verify`: re-hash the audit chains end to end."""

from __future__ import annotations

from dataclasses import asdict

import typer

from orchestrator.cli.context import organization_id, ready_engine
from orchestrator.cli.output import emit
from schema import audit
from schema.db import transaction
from schema.errors import ConflictError
from schema.validation import parse_uuid

app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@app.command("verify")
def verify(
    org: str | None = typer.Option(
        None, "--org", help="Only this organization's chain (id or name).", callback=organization_id
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check every chain; exits non-zero naming the first broken record if any chain was altered.
    Re-anchor records (a migration that rewrote old payloads, e.g. 0007) are checked and counted."""
    organization_id = parse_uuid(org, "organization id") if org else None
    with transaction(ready_engine()) as session:
        reports = audit.verify(session, organization_id)
    rows = [asdict(r) for r in reports]
    emit(
        rows,
        as_json,
        "Audit chains",
        ("organization_id", "records", "ok", "first_bad_id", "reason", "reanchors"),
    )
    broken = [r for r in reports if not r.ok]
    if broken:
        first = broken[0]
        raise ConflictError(
            f"audit chain of organization {first.organization_id} is broken at record {first.first_bad_id}: "
            f"{first.reason}"
        )
