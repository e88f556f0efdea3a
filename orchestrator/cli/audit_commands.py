"""`accute-fl audit verify | sign-reanchors | keys`: the hash-chained audit log and its re-anchors."""

from __future__ import annotations

from dataclasses import asdict
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
    from schema import audit_signing

    organization = parse_uuid(org, "organization id") if org else None
    kek = configured_kek(load_settings())
    if kek is not None:
        kek.current_version()  # a misconfigured KEK is a one-line error, not a distrusted key
    with transaction(ready_engine()) as session:
        reports = audit_signing.verify_chains(session, organization, kek)
    emit(
        [asdict(r) for r in reports],
        as_json,
        "Audit chains",
        ("organization_id", "records", "ok", "first_bad_id", "reason", "reanchors", "unsigned_reanchors"),
    )
    broken = [r for r in reports if not r.ok]
    if broken:
        first = broken[0]
        raise ConflictError(
            f"audit chain of organization {first.organization_id} is broken at record {first.first_bad_id}: "
            f"{first.reason}"
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
