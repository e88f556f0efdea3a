"""Alembic environment: runs on the connection handed over by ``schema.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from schema.base import Base
from schema.models import load_all

load_all()  # every table on Base.metadata, for autogenerate and the drift test

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("schema.migrate passes a connection; run migrations through `accute-fl db`")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; run `accute-fl db upgrade`")
run_migrations_online()
