"""`accute-fl user mfa enroll | remove | status`: a user's TOTP second factor (``schema.mfa``,
imported inside the commands: `user list` must not load the security tables).

The zero-trust policy may answer a request with an ``mfa`` challenge; the user answers it with a
code from the authenticator app set up here (``X-Accute-Challenge-Response: totp=<code>``).
"""

from __future__ import annotations

import typer

from orchestrator.cli.context import load_settings, ready_engine
from orchestrator.cli.output import emit
from schema.db import transaction
from schema.validation import parse_uuid

mfa_app = typer.Typer(
    help="A user's TOTP second factor (answers the zero-trust mfa challenge).", no_args_is_help=True
)

USER_OPTION = typer.Option(..., "--user", help="The user's id (see `accute-fl user list --org ORG`).")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")


@mfa_app.command("enroll")
def enroll(
    user: str = USER_OPTION,
    replace: bool = typer.Option(False, "--replace", help="Issue a new secret (the old one stops working)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create the user's TOTP secret and print it ONCE (otpauth URI and base32) for their
    authenticator app; it is stored only sealed under the user's data key and never shown again."""
    from orchestrator.keys import personal_data_vault
    from schema import mfa

    user_id = parse_uuid(user, "user id")
    vault = personal_data_vault(load_settings())
    with transaction(ready_engine()) as session:
        enrolment = mfa.enroll(session, vault, user_id, replace=replace)
    record = {
        "user_id": str(enrolment.user_id),
        "secret": enrolment.secret_base32,
        "otpauth_uri": enrolment.uri,
    }
    emit(
        record,
        as_json,
        "TOTP enrolled (shown once: give it to the user now)",
        ("user_id", "secret", "otpauth_uri"),
    )


@mfa_app.command("remove")
def remove(user: str = USER_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Remove the user's TOTP factor (audited); an mfa challenge can then not be passed until they
    enrol again."""
    from schema import mfa

    user_id = parse_uuid(user, "user id")
    with transaction(ready_engine()) as session:
        mfa.remove(session, user_id)
    emit({"user_id": str(user_id), "mfa": "removed"}, as_json, "TOTP removed", ("user_id", "mfa"))


@mfa_app.command("status")
def status(user: str = USER_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Whether the user has a TOTP factor (never the secret)."""
    from schema import mfa

    user_id = parse_uuid(user, "user id")
    with transaction(ready_engine()) as session:
        enrolled = mfa.is_enrolled(session, user_id)
    emit({"user_id": str(user_id), "enrolled": enrolled}, as_json, "TOTP", ("user_id", "enrolled"))
