"""What every command needs: settings read once, and an engine built from them."""

from __future__ import annotations

import uuid
from functools import lru_cache

from pydantic import ValidationError
from sqlalchemy import Engine

from schema.config import Settings, SqliteJournalMode
from schema.db import make_engine, sqlite_file_missing
from schema.errors import ConfigurationError, SchemaNotReadyError
from schema.migrate import require_current_schema


def load_settings() -> Settings:
    from pydantic_settings import SettingsError

    try:
        return Settings()
    except SettingsError as exc:  # a dict setting whose value is not JSON
        raise ConfigurationError(f"{exc}; give it as JSON, e.g. '{{\"digits\": 0.85}}'") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "ACCUTE_" + str(first["loc"][0]).upper() if first.get("loc") else "an ACCUTE_ setting"
        raise ConfigurationError(f"{field} is invalid: {first['msg']}") from None


@lru_cache(maxsize=1)
def _engine_for(url: str, timeout: int, journal_mode: SqliteJournalMode) -> Engine:
    # not a second Settings(): ~10 ms of 166 fields
    built = make_engine(url, connect_timeout_s=timeout, sqlite_journal_mode=journal_mode)
    _opened.append(built)
    return built


def engine(create: bool = False) -> Engine:
    """The engine for the configured database, whatever its schema revision.

    Only ``create=True`` (``db upgrade``) may bring a new SQLite file into being; every other
    command refuses a missing file rather than leave an empty one behind.
    """
    settings = load_settings()
    bound = _engine_for(
        settings.database_url, settings.database_connect_timeout_s, settings.sqlite_journal_mode
    )
    missing = sqlite_file_missing(bound)
    if missing is not None and not create:
        raise SchemaNotReadyError(f"there is no database file at {missing}; run `accute-fl db upgrade` first")
    return bound


def ready_engine() -> Engine:
    """The engine, after checking the schema is migrated to head (commands that read or write rows)."""
    bound = engine()
    require_current_schema(bound)
    return bound


def organization_id(value: str | None) -> str | None:
    """``--org`` callback: an organization's id or name in, its id out (names are looked up)."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        pass
    from schema import directory
    from schema.db import transaction

    with transaction(ready_engine()) as session:
        return str(directory.find_organization(session, value).id)


_opened: list[Engine] = []


def reset() -> None:
    """Close and forget cached engines (tests switch databases between commands)."""
    while _opened:
        _opened.pop().dispose()
    _engine_for.cache_clear()
