"""Privacy ledger: DP events and budget caps per organization and model type.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from schema.types import gen_random_uuid

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "privacy_budgets",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("model_type", sa.String(length=100), nullable=False),
        sa.Column("epsilon_cap", sa.Double(), nullable=True),
        sa.Column("delta", sa.Double(), nullable=True),
        sa.Column("rdp_curve", sa.LargeBinary(), nullable=True),
        sa.Column("rdp_orders_key", sa.String(length=32), nullable=True),
        sa.Column("event_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_round", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "epsilon_cap IS NULL OR epsilon_cap > 0", name=op.f("ck_privacy_budgets_epsilon_cap")
        ),
        sa.CheckConstraint(
            "delta IS NULL OR (delta > 0 AND delta < 1)", name=op.f("ck_privacy_budgets_delta")
        ),
        sa.CheckConstraint("event_count >= 0", name=op.f("ck_privacy_budgets_event_count")),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_privacy_budgets_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_budgets")),
        sa.UniqueConstraint("organization_id", "model_type", name=op.f("uq_privacy_budgets_organization_id")),
    )
    op.create_table(
        "privacy_ledger_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("model_type", sa.String(length=100), nullable=False),
        sa.Column("mechanism", sa.String(length=50), nullable=False),
        sa.Column("noise_multiplier", sa.Double(), nullable=False),
        sa.Column("sample_rate", sa.Double(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("clip_norm", sa.Double(), nullable=True),
        sa.Column("contribution_id", sa.Uuid(), nullable=True),
        sa.Column("aggregation_round", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "mechanism IN ('dp_sgd', 'central_gaussian')", name=op.f("ck_privacy_ledger_events_mechanism")
        ),
        sa.CheckConstraint("noise_multiplier > 0", name=op.f("ck_privacy_ledger_events_noise_multiplier")),
        sa.CheckConstraint(
            "sample_rate > 0 AND sample_rate <= 1", name=op.f("ck_privacy_ledger_events_sample_rate")
        ),
        sa.CheckConstraint("steps >= 0", name=op.f("ck_privacy_ledger_events_steps")),
        sa.CheckConstraint(
            "(mechanism = 'central_gaussian') = (clip_norm IS NOT NULL) AND (clip_norm IS NULL OR clip_norm > 0)",
            name=op.f("ck_privacy_ledger_events_clip_norm"),
        ),
        sa.CheckConstraint(
            "aggregation_round IS NULL OR aggregation_round >= 0",
            name=op.f("ck_privacy_ledger_events_aggregation_round"),
        ),
        sa.ForeignKeyConstraint(
            ["contribution_id"],
            ["federated_learning_contributions.id"],
            name=op.f("fk_privacy_ledger_events_contribution_id"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_privacy_ledger_events_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_ledger_events")),
        sa.UniqueConstraint("contribution_id", name=op.f("uq_privacy_ledger_events_contribution_id")),
    )
    op.create_index(
        "idx_privacy_ledger_tenant",
        "privacy_ledger_events",
        ["organization_id", "model_type", "id"],
        unique=False,
    )
    # The audit chain's tail lookup (newest record of an organization by id): one probe, not a scan.
    op.create_index("idx_audit_org_id", "immutable_audit_log", ["organization_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("idx_audit_org_id", table_name="immutable_audit_log")
    op.drop_index("idx_privacy_ledger_tenant", table_name="privacy_ledger_events")
    op.drop_table("privacy_ledger_events")
    op.drop_table("privacy_budgets")
