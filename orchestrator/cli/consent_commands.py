"""`accute-fl consent ...` and `accute-fl dsr ...`: consents, snapshots and data subject requests.

Every input is validated before anything is written; a refused command changes nothing.
`consent show --org` and `dsr list` read with Core (``schema.listings``); the commands that write
import the consent gate (and with it the ORM) when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from orchestrator.cli.context import load_settings, organization_id, ready_engine
from orchestrator.cli.output import emit, emit_json, emit_table
from schema import listings
from schema.db import reading, transaction
from schema.vocab import CONSENT_TYPES, DEFAULT_CONSENT_VERSION, DSR_REQUEST_TYPES, DSR_STATUSES

consent_app = typer.Typer(
    help="Users' consents and the consent snapshot a tenant node trains on.", no_args_is_help=True
)
dsr_app = typer.Typer(help="Data subject requests (GDPR/CCPA): file, list, process.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")
ORG_OPTION = typer.Option(..., "--org", help="Organization id or name.", callback=organization_id)
USER_OPTION = typer.Option(..., "--user", help="User id (a user of that organization).")
CONSENT_COLUMNS = ("user_id", "consent_type", "consent_given", "consent_version", "given_at", "withdrawn_at")
HISTORY_COLUMNS = ("consent_type", "action", "consent_version", "reason", "occurred_at")
REQUEST_COLUMNS = ("id", "user_id", "request_type", "status", "deadline", "overdue", "completed_at")


@consent_app.command("grant")
def consent_grant(
    org: str = ORG_OPTION,
    user: str = USER_OPTION,
    consent_type: str = typer.Option(..., "--type", help=f"One of: {', '.join(CONSENT_TYPES)}."),
    version: str = typer.Option(DEFAULT_CONSENT_VERSION, "--version", help="Version of the consent text."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Record that a user gives a consent (a no-op if already given in that version)."""
    from consent_gate import records

    with transaction(ready_engine()) as session:
        change = records.grant(session, org, user, consent_type, version)
        record = {**records.consent_as_dict(change.consent), "changed": change.changed}
    emit(record, as_json, "Consent granted" if change.changed else "Consent already granted", CONSENT_COLUMNS)


@consent_app.command("withdraw")
def consent_withdraw(
    org: str = ORG_OPTION,
    user: str = USER_OPTION,
    consent_type: str = typer.Option(..., "--type", help=f"One of: {', '.join(CONSENT_TYPES)}."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Withdraw a consent; the earlier grant stays in the history."""
    from consent_gate import records

    with transaction(ready_engine()) as session:
        change = records.withdraw(session, org, user, consent_type)
        record = {**records.consent_as_dict(change.consent), "changed": change.changed}
    emit(
        record,
        as_json,
        "Consent withdrawn" if change.changed else "Consent already withdrawn",
        CONSENT_COLUMNS,
    )


@consent_app.command("show")
def consent_show(
    org: str = ORG_OPTION,
    user: str | None = typer.Option(None, "--user", help="Only this user, with the history of changes."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show the organization's consents (or one user's, with their history)."""
    if user is None:  # the organization's consents: Core reads, no ORM
        with reading(ready_engine()) as connection:
            consents = [listings.consent_as_dict(c) for c in listings.current_consents(connection, org)]
        payload: dict[str, Any] = {"organization_id": org, "consents": consents}
    else:
        from consent_gate import records, scope

        with transaction(ready_engine()) as session:
            consents = [records.consent_as_dict(c) for c in records.current_consents(session, org, user)]
            payload = {"organization_id": str(scope.organization(session, org).id), "consents": consents}
            payload["user_id"] = str(scope.member(session, org, user).id)
            payload["history"] = [records.event_as_dict(e) for e in records.history(session, org, user)]
    if as_json:
        emit_json(payload)
        return
    emit_table("Consents", consents, CONSENT_COLUMNS)
    if user is not None:
        emit_table("History", payload["history"], HISTORY_COLUMNS)


@consent_app.command("snapshot")
def consent_snapshot(
    org: str = ORG_OPTION,
    model_type: str = typer.Option(..., "--model-type", help="The model type of the round, e.g. digits."),
    policy_file: Path | None = typer.Option(
        None, "--policy", help="TOML consent policy (default: the built-in policy)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Take (and store) the consent snapshot: the users whose records may train this model type."""
    from consent_gate.gate import take_snapshot
    from consent_gate.policy import ConsentPolicy

    policy = ConsentPolicy.from_toml(policy_file) if policy_file is not None else ConsentPolicy.default()
    with transaction(ready_engine()) as session:
        snapshot = take_snapshot(session, org, model_type, policy)
    record = snapshot.as_dict()
    if as_json:
        emit_json(record)
        return
    shown = {**record, "required_consents": ", ".join(record["required_consents"])}
    emit(shown, False, "Consent snapshot", ("id", "model_type", "required_consents", "user_count", "digest"))


@dsr_app.command("file")
def dsr_file(
    org: str = ORG_OPTION,
    user: str = USER_OPTION,
    request_type: str = typer.Option(..., "--type", help=f"One of: {', '.join(DSR_REQUEST_TYPES)}."),
    as_json: bool = JSON_OPTION,
) -> None:
    """File a request; the deadline is 30 days from now. Erasure, restriction and objection
    exclude the user from consent snapshots at once."""
    from consent_gate import dsr

    with transaction(ready_engine()) as session:
        record = dsr.request_as_dict(dsr.file_request(session, org, user, request_type))
    emit(record, as_json, "Data subject request filed", REQUEST_COLUMNS)


@dsr_app.command("list")
def dsr_list(
    org: str | None = typer.Option(
        None, "--org", help="Only this organization's requests (id or name).", callback=organization_id
    ),
    status: str | None = typer.Option(None, "--status", help=f"One of: {', '.join(DSR_STATUSES)}."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List requests, soonest deadline first."""
    with reading(ready_engine()) as connection:
        rows = [
            listings.request_as_dict(r, include_response=False)
            for r in listings.list_requests(connection, org, status)
        ]
    emit(rows, as_json, "Data subject requests", ("organization_id", *REQUEST_COLUMNS))


@dsr_app.command("process")
def dsr_process(
    request_id: str = typer.Argument(..., help="Request id (see `accute-fl dsr list`)."),
    org: str | None = typer.Option(
        None,
        "--org",
        help="Refuse unless the request belongs to this organization (id or name).",
        callback=organization_id,
    ),
    reject: str | None = typer.Option(None, "--reject", help="Reject the request with this reason instead."),
    email: str | None = typer.Option(None, "--email", help="The corrected email (rectification requests)."),
    processed_by: str | None = typer.Option(
        None, "--by", help="Id of the user processing it (same organization)."
    ),
    compact: bool = typer.Option(
        True,
        "--compact/--no-compact",
        help="After an erasure, rewrite the touched tables now (default), or leave it to `dsr compact`.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Carry out a request and complete it: access/portability export JSON (see --json) listing every
    store that holds the user's data; erasure walks the same stores (response_details says what was
    done in each), shreds the user's data key, keeps the model lineage, then rewrites the touched
    tables (SQLite: VACUUM; PostgreSQL: VACUUM FULL) so no erased bytes stay in free space or dead
    rows (`compaction` says what was done); restriction/objection withdraw training consents."""
    from consent_gate.admin_views import process_and_compact
    from orchestrator.keys import personal_data_vault

    vault = personal_data_vault(load_settings()) if reject is not None else None
    record = process_and_compact(
        ready_engine(),
        request_id,
        organization_id=org,
        reject_reason=reject,
        processed_by=processed_by,
        rectified_email=email,
        vault=vault,
        compact=compact,
    )
    emit(record, as_json, f"Data subject request {record['status']}", REQUEST_COLUMNS)


@dsr_app.command("compact")
def dsr_compact(as_json: bool = JSON_OPTION) -> None:
    """Rewrite the tables erasures touch again (SQLite: VACUUM; PostgreSQL: VACUUM FULL), e.g. when
    `dsr process` reported its compaction incomplete (a busy table, an older open transaction)."""
    from consent_gate import erasure

    result = erasure.compact(ready_engine())
    emit(result, as_json, f"Compaction {result['status']}", ("status", "tables", "reason"))
