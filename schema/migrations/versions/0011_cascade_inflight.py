"""Cross-process single flight of the inference cascade.

- ``llm_inflight``: one row per (organization, caller, request id) being answered right now. The
  worker process that inserts it calls the providers; copies of the request in other processes
  wait for its ``llm_requests`` row instead of calling a provider again. The row is deleted in the
  transaction that stores the outcome. On PostgreSQL the table is UNLOGGED: claims are transient
  locks (no WAL for them; after a crash the table is empty, which is right: the claims' processes
  are gone).

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "llm_inflight",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("caller", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("claim_id", sa.Uuid(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_llm_inflight_organization_id")
        ),
        sa.PrimaryKeyConstraint("organization_id", "caller", "request_id", name=op.f("pk_llm_inflight")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE llm_inflight SET UNLOGGED")


def downgrade() -> None:
    op.drop_table("llm_inflight")
