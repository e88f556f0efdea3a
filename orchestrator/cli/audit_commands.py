"""`accute-fl audit verify | sign-reanchors | keys | anchor | anchors`: the hash-chained audit log,
its re-anchors and its signed anchors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from sqlalchemy import Engine

from orchestrator.cli.context import load_settings, organization_id, ready_engine
from orchestrator.cli.output import emit
from schema.db import transaction
from schema.errors import AccuteError, ConfigurationError, ConflictError
from schema.validation import parse_uuid

app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@app.command("verify")
def verify(
    org: str | None = typer.Option(
        None, "--org", help="Only this organization's chain (id or name).", callback=organization_id
    ),
    require_signed: bool = typer.Option(
        False, "--require-signed", help="Fail when a re-anchor has no service signature yet."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check every chain; exits non-zero naming the first broken record if any chain was altered.
    Re-anchor records (a migration that rewrote old payloads, e.g. 0007) are checked: their binding
    to the old head and the service's signature (a forged or tampered one breaks the chain; an
    unsigned one is listed). Where the KEK is reachable, the signing keys are checked against it."""
    from orchestrator.keys import configured_kek
    from schema import audit_anchors

    organization = parse_uuid(org, "organization id") if org else None
    kek = configured_kek(load_settings())
    if kek is not None:
        kek.current_version()  # a misconfigured KEK is a one-line error, not a distrusted key
    with transaction(ready_engine()) as session:
        reports, anchor_problems = audit_anchors.verify_all(session, organization, kek)
    emit(
        [asdict(r) for r in reports],
        as_json,
        "Audit chains",
        ("organization_id", "records", "ok", "first_bad_id", "reason", "reanchors", "unsigned_reanchors"),
    )
    if anchor_problems and not as_json:  # in JSON the error line names the first one
        emit(
            [asdict(p) for p in anchor_problems],
            False,
            "Audit anchors that no longer hold",
            ("anchor_id", "organization_id", "record_id", "reason"),
        )
    broken = [r for r in reports if not r.ok]
    if broken:
        first = broken[0]
        raise ConflictError(
            f"audit chain of organization {first.organization_id} is broken at record {first.first_bad_id}: "
            f"{first.reason}"
        )
    if anchor_problems:
        first_problem = anchor_problems[0]
        raise ConflictError(
            f"audit anchor {first_problem.anchor_id} of organization {first_problem.organization_id} no "
            f"longer holds (record {first_problem.record_id}): {first_problem.reason}"
        )
    unsigned = sum(len(r.unsigned_reanchors) for r in reports)
    if unsigned:
        message = (
            f"{unsigned} re-anchor record(s) carry no service signature; "
            "run `accute-fl audit sign-reanchors` where the KEK is reachable"
        )
        if require_signed:
            raise ConflictError(message)
        typer.echo(f"warning: {message}", err=True)


def sign_pending_reanchors(bound: Engine, required: bool) -> dict[str, Any]:
    """Sign the unsigned re-anchors with the service key when the KEK is configured here.

    Returns ``{"signed": [...], "unsigned": n}``. Without a KEK: raises when ``required``, else
    leaves them unsigned (``db upgrade`` on a host without the KEK).
    """
    from orchestrator.keys import configured_kek
    from schema import audit_signing

    with transaction(bound) as session:
        waiting = len(audit_signing.pending(session))
        if not waiting:
            return {"signed": [], "unsigned": 0}
        kek = configured_kek(load_settings())
        if kek is None:
            if required:
                raise ConfigurationError(
                    "the KEK is not reachable here (no ACCUTE_KEK_FILE file, or no ACCUTE_PKCS11_PIN); "
                    "run this where the service's KEK is"
                )
            return {"signed": [], "unsigned": waiting}
        try:
            signed = audit_signing.sign_pending(session, kek)
        except AccuteError as exc:
            if required:
                raise
            return {"signed": [], "unsigned": waiting, "reason": str(exc)}
    return {"signed": signed, "unsigned": waiting - len(signed)}


@app.command("sign-reanchors")
def sign_reanchors(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Sign every re-anchor record that has no signature yet with the service's Ed25519 key (private
    half wrapped by the KEK). A re-anchor in a chain that does not verify up to it is not signed."""
    result = sign_pending_reanchors(ready_engine(), required=True)
    emit(result["signed"], as_json, "Re-anchors signed", ("record_id", "organization_id", "migration", "kid"))
    if result["unsigned"]:
        raise ConflictError(
            f"{result['unsigned']} re-anchor record(s) left unsigned: their chain is broken before them; "
            "see `accute-fl audit verify`"
        )


@app.command("keys")
def keys(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The public keys that sign re-anchors: publish a key id outside the database to pin it."""
    from schema import audit_signing

    with transaction(ready_engine()) as session:
        rows = audit_signing.public_keys(session)
    emit(rows, as_json, "Audit signing keys", ("kid", "algorithm", "public_key"))


@app.command("anchor")
def anchor(
    org: str | None = typer.Option(
        None, "--org", help="Only this organization's chain (id or name).", callback=organization_id
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Sign every chain's current head (record id, hash, length, time) with the audit signing key
    and store it; export the anchors (``audit anchors --export``) somewhere the database's writers
    cannot reach. A chain that does not verify is not anchored (exit 4). Run it periodically."""
    from orchestrator.keys import configured_kek
    from schema import audit, audit_anchors

    organization = parse_uuid(org, "organization id") if org else None
    kek = configured_kek(load_settings())
    if kek is None:
        raise ConfigurationError(
            "the KEK is not reachable here (no ACCUTE_KEK_FILE file, or no ACCUTE_PKCS11_PIN); "
            "anchor where the service's KEK is"
        )
    with transaction(ready_engine()) as session:
        broken = [r for r in audit.verify(session, organization) if not r.ok]
        if broken:
            raise ConflictError(
                f"audit chain of organization {broken[0].organization_id} is broken at record "
                f"{broken[0].first_bad_id}; an anchor would vouch for it (see `accute-fl audit verify`)"
            )
        rows = audit_anchors.anchor(session, kek, organization)
    emit(
        rows, as_json, "Audit chain heads anchored", ("id", "organization_id", "record_id", "records", "kid")
    )


@app.command("anchors")
def anchors(
    org: str | None = typer.Option(
        None, "--org", help="Only this organization's anchors (id or name).", callback=organization_id
    ),
    export: Path | None = typer.Option(None, "--export", help="Write the anchors to this JSON file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The stored anchors, oldest first; with ``--export`` also written to a JSON file with the
    public keys that verify them."""
    from schema import audit_anchors, audit_signing

    organization = parse_uuid(org, "organization id") if org else None
    with transaction(ready_engine()) as session:
        rows = audit_anchors.export(session, organization)
        keys = audit_signing.public_keys(session)
    if export is not None:
        document = {"format": "accute-audit-anchors/1", "keys": keys, "anchors": rows}
        export.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    emit(
        rows,
        as_json,
        "Audit anchors",
        ("id", "organization_id", "record_id", "record_hash", "records", "anchored_at", "kid"),
    )
