"""The Fin(Ai)d hub outbox (issue 13).

Creates ``hub_outbox``: one row per domain event, appended by ``schema.events.append`` in the
transaction of the change that causes it, and published by the relay afterwards (at least once,
``event_id`` the idempotency key, a tenant's events in ``sequence`` order).

Downgrade drops the table, and with it any event not yet published.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hub_outbox",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("correlation_id", sa.String(length=100), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'published', 'dead')", name=op.f("ck_hub_outbox_status")),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_hub_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_hub_outbox_event_id")),
    )
    op.create_index("idx_hub_outbox_due", "hub_outbox", ["status", "next_attempt_at"], unique=False)
    op.create_index("idx_hub_outbox_org_seq", "hub_outbox", ["organization_id", "sequence"], unique=False)


def downgrade() -> None:
    op.drop_index("idx_hub_outbox_org_seq", table_name="hub_outbox")
    op.drop_index("idx_hub_outbox_due", table_name="hub_outbox")
    op.drop_table("hub_outbox")
