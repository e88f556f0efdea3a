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

    # Privacy (privacy/): the platform default cap for a tenant and model type without its own.
    default_epsilon_cap: float = Field(
        default=8.0,
        gt=0,
        description="Platform default privacy budget cap (epsilon) per tenant and model type.",
    )
    default_delta: float = Field(
        default=1e-5, gt=0, lt=1, description="Platform default delta for the privacy budget."
    )
    accountant: str = Field(
        default="rdp", pattern="^(rdp|prv)$", description="Privacy accountant for the ledger: rdp or prv."
    )

    # Consent gate (consent_gate/): a tenant joins a round only with at least this many consenting users.
    min_consenting_users: int = Field(
        default=1, ge=1, description="Minimum users with every required consent for a tenant to be eligible."
    )
