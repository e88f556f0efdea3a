"""Programmatic Alembic: upgrade, downgrade and read the revision of a database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from schema.db import describe_url, unavailable
from schema.errors import InvalidInputError, SchemaNotReadyError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships its revisions
        raise RuntimeError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise unavailable(engine, exc) from None


def _run(engine: Engine, action: str, revision: str) -> None:
    config = alembic_config()
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    except OperationalError as exc:
        raise unavailable(engine, exc) from None
    except CommandError as exc:
        raise InvalidInputError(f"cannot {action} to '{revision}': {exc}") from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str = "-1") -> None:
    _run(engine, "downgrade", revision)


def require_current_schema(engine: Engine) -> None:
    """Refuse to work on a database that is not migrated to the code's head revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotReadyError(
            f"the database at {describe_url(engine.url)} is at revision {current or 'none'}, "
            f"the code needs {head}; run `accute-fl db upgrade`"
        )


def new_revision(message: str) -> None:
    """Write a draft revision for the model changes since head (developers only; review it).

    Autogenerates against a throwaway SQLite database at head. Review the draft: replace
    SQLite-rendered server defaults with portable ones, as in revision 0001.
    """
    import tempfile

    from schema.db import make_engine

    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/draft.db")
        upgrade(engine)
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)
        engine.dispose()
