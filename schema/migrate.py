"""Programmatic Alembic: upgrade, downgrade and read the revision of a database.

Reading the revisions (``head_revision``, ``current_revision``, ``require_current_schema``) does
not import Alembic: every command that touches rows checks the schema first, and Alembic's import
costs more than the rest of a small command. Only upgrade, downgrade and drafting import it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import OperationalError

from schema.db import describe_url, unavailable
from schema.errors import InvalidInputError, SchemaNotReadyError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"

_REVISION = re.compile(r"^revision\s*(?::[^=\n]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=\n]*)?=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def scanned_head() -> str | None:
    """The single head of the revision files, read as text; None when the files are not the plain
    ``revision = "x"`` / ``down_revision = "y"`` shape this reader knows (then ask Alembic)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        if path.name == "__init__.py":
            continue
        # Only lines that start with an assignment's name can match (the patterns are anchored at
        # a line start): matching those, not 110 KB of DDL, is most of the saving on every command.
        source = "\n".join(
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith(("revision", "down_revision"))
        )
        found, down = _REVISION.findall(source), _DOWN_REVISION.findall(source)
        if len(found) != 1 or len(down) != 1:
            return None
        revisions.add(found[0])
        parents.update(_QUOTED.findall(down[0]))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


@lru_cache(maxsize=1)
def head_revision() -> str:
    head = scanned_head()
    if head is not None:
        return head
    from alembic.script import ScriptDirectory

    alembic_head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if alembic_head is None:  # pragma: no cover - the package always ships its revisions
        raise RuntimeError("no migrations found")
    return alembic_head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    except OperationalError as exc:
        raise unavailable(engine, exc) from None
    if len(rows) > 1:
        raise SchemaNotReadyError(
            f"the database at {describe_url(engine.url)} has several revisions ({', '.join(sorted(rows))}); "
            "merge them with Alembic"
        )
    return rows[0] if rows else None


def _run(engine: Engine, action: str, revision: str) -> None:
    from alembic import command
    from alembic.util.exc import CommandError

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

    from alembic import command

    from schema.db import make_engine

    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/draft.db")
        upgrade(engine)
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)
        engine.dispose()
