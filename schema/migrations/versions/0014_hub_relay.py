"""The hub relay: leases on outbox rows, and workflow starts (issue 13).

Adds ``hub_outbox.claimed_by`` / ``claim_expires`` (the lease of the relay publishing a row; several
relays take disjoint rows, a dead relay's lease expires), an index on ``(status, published_at)`` for
the operator's rate and latency, and creates ``hub_workflow_executions`` (one row per workflow and
triggering event: a workflow starts once per event).

Downgrade drops the table, the index and the two columns (leases in flight are forgotten: their
rows are pending and get claimed again).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hub_outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("claim_expires", sa.DateTime(timezone=True), nullable=True))
    op.create_index("idx_hub_outbox_published", "hub_outbox", ["status", "published_at"], unique=False)
    op.create_table(
        "hub_workflow_executions",
        sa.Column("workflow_id", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column(
            "input",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=20), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("execution_id", sa.String(length=200), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'started', 'dead')", name=op.f("ck_hub_workflow_executions_status")
        ),
        sa.PrimaryKeyConstraint("workflow_id", "event_id", name=op.f("pk_hub_workflow_executions")),
    )
    op.create_index(
        "idx_hub_workflow_executions_due",
        "hub_workflow_executions",
        ["status", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("idx_hub_workflow_executions_due", table_name="hub_workflow_executions")
    op.drop_table("hub_workflow_executions")
    op.drop_index("idx_hub_outbox_published", table_name="hub_outbox")
    with op.batch_alter_table("hub_outbox") as batch:
        batch.drop_column("claim_expires")
        batch.drop_column("claimed_by")
