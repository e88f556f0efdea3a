"""`accute-fl db upgrade | downgrade | current`."""

from __future__ import annotations

import typer

from orchestrator.cli.context import engine
from orchestrator.cli.output import emit_json
from schema import migrate
from schema.db import check_connection, describe_url
from schema.errors import InvalidInputError

app = typer.Typer(help="Create, migrate and inspect the database schema.", no_args_is_help=True)


@app.command()
def upgrade(
    revision: str = typer.Option("head", "--revision", "-r", help="Target revision (default: the latest)."),
) -> None:
    """Apply migrations up to REVISION (creates every table on an empty database)."""
    bound = engine(create=True)
    check_connection(bound)
    before = migrate.current_revision(bound)
    migrate.upgrade(bound, revision)
    after = migrate.current_revision(bound)
    from rich.console import Console  # only upgrade and downgrade print through rich

    Console(stderr=True, soft_wrap=True).print(
        f"database {describe_url(bound.url)}: {before or 'empty'} -> {after} "
        f"({'up to date' if after == migrate.head_revision() else 'behind head'})"
    )
    if after == migrate.head_revision():
        from orchestrator.cli.audit_commands import sign_pending_reanchors

        reanchors = sign_pending_reanchors(bound, required=False)
        if reanchors["signed"]:
            typer.echo(f"signed {len(reanchors['signed'])} audit re-anchor record(s)", err=True)
        if reanchors["unsigned"]:
            why = reanchors.get("reason", "no KEK here")
            typer.echo(
                f"{reanchors['unsigned']} audit re-anchor record(s) left unsigned ({why}); "
                "run `accute-fl audit sign-reanchors` where the KEK is",
                err=True,
            )


@app.command()
def downgrade(
    revision: str = typer.Option(
        "-1", "--revision", "-r", help="Target revision: -1 (one step), base, or an id."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask; downgrading drops tables and their rows."
    ),
) -> None:
    """Revert migrations down to REVISION. Dropped tables lose their rows."""
    bound = engine()
    check_connection(bound)
    before = migrate.current_revision(bound)
    if before is None:
        raise InvalidInputError("the database has no migrations applied; nothing to downgrade")
    if not yes and not typer.confirm(
        f"Downgrade {describe_url(bound.url)} from {before} to {revision}? Tables will be dropped",
        default=False,
    ):
        raise typer.Abort()
    migrate.downgrade(bound, revision)
    after = migrate.current_revision(bound)
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(
        f"database {describe_url(bound.url)}: {before} -> {after or 'base (empty)'}"
    )


@app.command()
def current(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the database's revision and whether it is the head."""
    bound = engine()
    check_connection(bound)
    revision, head = migrate.current_revision(bound), migrate.head_revision()
    if as_json:
        emit_json({"revision": revision, "head": head, "is_head": revision == head})
    else:
        marker = " (head)" if revision == head else f" (head is {head}; run `accute-fl db upgrade`)"
        typer.echo(f"{revision or 'none'}{marker}")
