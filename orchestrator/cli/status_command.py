"""`accute-fl status`: where the data lives and what is in it, at a glance."""

from __future__ import annotations

from typing import Any

import typer
from sqlalchemy import func, select

from orchestrator.cli.context import engine
from orchestrator.cli.output import emit_json
from schema import directory, migrate
from schema.db import check_connection, describe_url, transaction
from schema.models import AgentVamnRouting, Organization, User


def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the database, its schema revision, and how many tenants, users and agent routes it holds."""
    bound = engine()
    check_connection(bound)
    revision, head = migrate.current_revision(bound), migrate.head_revision()
    report: dict[str, Any] = {
        "database": describe_url(bound.url),
        "backend": bound.dialect.name,
        "revision": revision,
        "head": head,
        "schema_ready": revision == head,
    }
    if revision == head:
        with transaction(bound) as session:
            report["organizations"] = directory.count_rows(session, Organization)
            report["users"] = directory.count_rows(session, User)
            report["agent_routes"] = int(
                session.scalar(select(func.count()).select_from(AgentVamnRouting)) or 0
            )
    if as_json:
        emit_json(report)
        return
    typer.echo(f"database      {report['database']} ({report['backend']})")
    typer.echo(f"schema        {revision or 'none'} (head {head})")
    if revision != head:
        typer.echo("              not ready: run `accute-fl db upgrade`")
        return
    typer.echo(f"organizations {report['organizations']}")
    typer.echo(f"users         {report['users']}")
    typer.echo(f"agent routes  {report['agent_routes']} (VAMN heads for the 12 agents)")
