"""`accute-fl threat import | list | expire`: the indicators the service matches requests against.

The running service reloads its in-memory index when the table changes
(``ACCUTE_THREAT_INTEL_REFRESH_S``), so an import takes effect without a restart.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import typer

from orchestrator.cli.context import load_settings, ready_engine
from orchestrator.cli.output import emit
from schema import audit
from schema.db import transaction
from schema.errors import InvalidInputError, NotFoundError

app = typer.Typer(
    help="Threat intelligence: import STIX 2.1 bundles and CSV feeds, list, expire.", no_args_is_help=True
)


@app.command("import")
def import_file(
    file: Path = typer.Argument(..., help="A STIX 2.1 bundle (JSON) or a CSV with the table's column names."),
    source: str | None = typer.Option(
        None,
        "--source",
        help="Source name of a STIX bundle's indicators (default: its identity, else 'stix').",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Insert new indicators and update known ones (same type, value and source); importing the
    same file again changes nothing."""
    from orchestrator.security import threat_intel

    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"no file {file}; give the path of a STIX bundle or CSV") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {file} as UTF-8 text: {exc}") from None
    indicators = threat_intel.parse_file(file.name, text, source)
    with transaction(ready_engine()) as session:
        result = threat_intel.import_indicators(session, indicators)
        if result.inserted or result.updated:
            audit.append(
                session,
                organization_id=None,
                action="threat.imported",
                resource_type="threat_intelligence",
                data={"file": file.name, "inserted": result.inserted, "updated": result.updated},
            )
    emit(
        {"file": str(file), **vars(result)},
        as_json,
        "Threat intelligence import",
        ("file", "read", "inserted", "updated", "unchanged"),
    )


@app.command("list")
def list_cmd(
    indicator_type: str | None = typer.Option(
        None, "--type", help="ip, domain, url, hash, email or user_agent."
    ),
    include_inactive: bool = typer.Option(False, "--all", help="Include expired (inactive) indicators."),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000, help="Most recently seen first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The indicators, most recently seen first."""
    from orchestrator.security import threat_intel

    with transaction(ready_engine()) as session:
        rows = threat_intel.list_indicators(session, indicator_type, include_inactive, limit)
    emit(
        rows,
        as_json,
        "Threat indicators",
        ("indicator_type", "indicator_value", "threat_type", "severity", "source", "last_seen", "is_active"),
    )


@app.command("expire")
def expire_cmd(
    days: int | None = typer.Option(
        None, "--older-than-days", min=1, help="Default: ACCUTE_THREAT_INTEL_MAX_AGE_DAYS."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Deactivate indicators last seen longer ago than the cutoff (they are kept, no longer matched)."""
    from orchestrator.security import threat_intel

    age = days or load_settings().threat_intel_max_age_days
    with transaction(ready_engine()) as session:
        expired = threat_intel.expire(session, timedelta(days=age))
        if expired:
            audit.append(
                session,
                organization_id=None,
                action="threat.expired",
                resource_type="threat_intelligence",
                data={"older_than_days": age, "expired": expired},
            )
    emit({"older_than_days": age, "expired": expired}, as_json, "Expired", ("older_than_days", "expired"))
