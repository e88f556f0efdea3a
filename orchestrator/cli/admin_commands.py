"""`accute-fl org ...` and `accute-fl user ...`: the minimal admin of tenants and their people.

`org list` reads with Core (``schema.listings``); the commands that write import the ORM's
``schema.directory`` when they run, so listing stays free of ``sqlalchemy.orm``.
"""

from __future__ import annotations

import typer

from orchestrator.cli.context import load_settings, organization_id, ready_engine
from orchestrator.cli.mfa_commands import mfa_app
from orchestrator.cli.output import emit
from schema import listings
from schema.db import reading, transaction

org_app = typer.Typer(help="Organizations (tenants).", no_args_is_help=True)
user_app = typer.Typer(help="Users of an organization.", no_args_is_help=True)
user_app.add_typer(mfa_app, name="mfa")

ORG_COLUMNS = ("id", "name", "billing_model", "created_at")
USER_COLUMNS = ("id", "organization_id", "email", "created_at")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")


@org_app.command("create")
def org_create(
    name: str = typer.Option(..., "--name", help="Display name of the firm (unique)."),
    billing_model: str = typer.Option(
        "pay_as_you_go", "--billing-model", help="How fallback usage is billed."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create an organization."""
    from schema import directory

    with transaction(ready_engine()) as session:
        record = listings.organization_as_dict(directory.create_organization(session, name, billing_model))
    emit(record, as_json, "Organization created", ORG_COLUMNS)


@org_app.command("list")
def org_list(as_json: bool = JSON_OPTION) -> None:
    """List organizations."""
    with reading(ready_engine()) as connection:
        rows = [listings.organization_as_dict(o) for o in listings.list_organizations(connection)]
    emit(rows, as_json, "Organizations", ORG_COLUMNS)


@user_app.command("create")
def user_create(
    org: str = typer.Option(..., "--org", help="Organization id or name.", callback=organization_id),
    email: str = typer.Option(..., "--email", help="Email address (unique within the organization)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a user in an organization (the audit record gets the address only sealed under the
    user's own data key, which an erasure shreds). An address (or its domain) listed in threat
    intelligence is refused (exit 6)."""
    from orchestrator.keys import personal_data_vault
    from orchestrator.security.threat_intel import refuse_listed_email
    from schema import directory
    from schema.validation import parse_uuid

    vault = personal_data_vault(load_settings())
    engine = ready_engine()
    refuse_listed_email(engine, email, "user.create", parse_uuid(org, "organization id"))
    with transaction(engine) as session:
        record = directory.user_as_dict(directory.create_user(session, org, email, vault))
    emit(record, as_json, "User created", USER_COLUMNS)


@user_app.command("list")
def user_list(
    org: str = typer.Option(..., "--org", help="Organization id or name.", callback=organization_id),
    as_json: bool = JSON_OPTION,
) -> None:
    """List the users of an organization."""
    from schema import directory

    with transaction(ready_engine()) as session:
        rows = [directory.user_as_dict(u) for u in directory.list_users(session, org)]
    emit(rows, as_json, "Users", USER_COLUMNS)
