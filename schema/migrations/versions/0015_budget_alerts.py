"""Budget alerts: ``privacy_budget_alerts``, one row per budget crossing 80 % or 100 % of its cap.

Written by ``privacy/alerts.py`` in the transaction of the ledger charge (or cap change) that
crossed the threshold; unique per (organization, model type, unit, threshold, cap), so a crossing
is recorded once and a raised cap can alert again. Existing budgets get no backfilled alerts: the
transitions happened before anyone recorded them (``budget show`` still reports their status).

Downgrade drops the table (the audit records of the alerts stay in the chain).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from schema.types import gen_random_uuid

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "privacy_budget_alerts",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("model_type", sa.String(length=100), nullable=False),
        sa.Column("unit", sa.String(length=10), nullable=False),
        sa.Column("threshold", sa.String(length=20), nullable=False),
        sa.Column("epsilon", sa.Double(), nullable=False),
        sa.Column("epsilon_cap", sa.Double(), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("ledger_event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "threshold IN ('near_cap', 'exhausted')", name=op.f("ck_privacy_budget_alerts_threshold")
        ),
        sa.CheckConstraint(
            "unit IN ('record', 'user', 'tenant')", name=op.f("ck_privacy_budget_alerts_unit")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_privacy_budget_alerts_organization_id")
        ),
        sa.ForeignKeyConstraint(
            ["ledger_event_id"],
            ["privacy_ledger_events.id"],
            name=op.f("fk_privacy_budget_alerts_ledger_event_id"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_budget_alerts")),
        sa.UniqueConstraint(
            "organization_id",
            "model_type",
            "unit",
            "threshold",
            "epsilon_cap",
            name=op.f("uq_privacy_budget_alerts_once"),
        ),
    )
    op.create_index("idx_privacy_budget_alerts_created", "privacy_budget_alerts", ["created_at"])


def downgrade() -> None:
    op.drop_index("idx_privacy_budget_alerts_created", table_name="privacy_budget_alerts")
    op.drop_table("privacy_budget_alerts")
