"""The one configuration class of Accute FL; every setting comes from an ``ACCUTE_`` variable."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_FILE = "accute.db"


class Settings(BaseSettings):
    """Read once per process entry point (CLI command, server start) and passed down.

    Nothing below reads the environment itself, so tests build a ``Settings`` explicitly.
    """

    model_config = SettingsConfigDict(env_prefix="ACCUTE_", env_file=None, extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DATABASE_FILE}",
        description=(
            "SQLAlchemy URL. Default: an SQLite file 'accute.db' in the working directory. "
            "Use postgresql+psycopg://user@host:5432/db for PostgreSQL."
        ),
    )
    database_connect_timeout_s: int = Field(
        default=5, ge=1, le=120, description="Seconds to wait for a PostgreSQL connection before failing."
    )
    weights_dir: Path = Field(
        default=Path("weights"),
        description="Content-addressed store of published model weights (files named by SHA-256).",
    )
    debug: bool = Field(default=False, description="Show full tracebacks for unexpected errors.")
