"""Federated training state: runs, node bindings, round outcomes and summaries, published models.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from schema.types import gen_random_uuid

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONB = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _id() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False)


def _created() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True)


def upgrade() -> None:
    op.create_table(
        "fl_runs",
        _id(),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("config", JSONB, nullable=False),
        sa.Column("status", sa.String(length=20), server_default=sa.text("'running'"), nullable=False),
        sa.Column("last_completed_round", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("weights_checksum", sa.String(length=64), nullable=True),
        sa.Column("seen_checksums", JSONB, nullable=False),
        _created(),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_runs")),
        sa.UniqueConstraint("name", name=op.f("uq_fl_runs_name")),
    )
    op.create_table(
        "fl_node_bindings",
        _id(),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("node_id", sa.String(length=20), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        _created(),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_fl_node_bindings_organization_id")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["fl_runs.id"], name=op.f("fk_fl_node_bindings_run_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_node_bindings")),
        sa.UniqueConstraint("run_id", "node_id", name=op.f("uq_fl_node_bindings_run_id")),
    )
    op.create_table(
        "fl_round_outcomes",
        _id(),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("aggregation_round", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=50), nullable=False),
        sa.Column("sampled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("contribution_id", sa.Uuid(), nullable=True),
        sa.Column("dp_event", JSONB, nullable=True),
        sa.Column("epsilon_after", sa.Float(), nullable=True),
        _created(),
        sa.ForeignKeyConstraint(
            ["contribution_id"],
            ["federated_learning_contributions.id"],
            name=op.f("fk_fl_round_outcomes_contribution_id"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_fl_round_outcomes_organization_id")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["fl_runs.id"], name=op.f("fk_fl_round_outcomes_run_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_round_outcomes")),
    )
    op.create_index(
        "idx_fl_outcomes_run_round", "fl_round_outcomes", ["run_id", "aggregation_round"], unique=False
    )
    op.create_table(
        "fl_round_summaries",
        _id(),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("aggregation_round", sa.Integer(), nullable=False),
        sa.Column("metric_name", sa.String(length=50), nullable=False),
        sa.Column("metric_value", sa.Float(), nullable=True),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("weights_checksum", sa.String(length=64), nullable=False),
        _created(),
        sa.ForeignKeyConstraint(["run_id"], ["fl_runs.id"], name=op.f("fk_fl_round_summaries_run_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_round_summaries")),
        sa.UniqueConstraint("run_id", "aggregation_round", name=op.f("uq_fl_round_summaries_run_id")),
    )
    op.create_table(
        "fl_published_models",
        _id(),
        sa.Column("registry_id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("aggregation_round", sa.Integer(), nullable=False),
        sa.Column("metric_name", sa.String(length=50), nullable=False),
        sa.Column("metric_value", sa.Float(), nullable=True),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
        _created(),
        sa.ForeignKeyConstraint(
            ["registry_id"], ["vamn_model_registry.id"], name=op.f("fk_fl_published_models_registry_id")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["fl_runs.id"], name=op.f("fk_fl_published_models_run_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_published_models")),
        sa.UniqueConstraint("registry_id", name=op.f("uq_fl_published_models_registry_id")),
    )


def downgrade() -> None:
    op.drop_table("fl_published_models")
    op.drop_table("fl_round_summaries")
    op.drop_index("idx_fl_outcomes_run_round", table_name="fl_round_outcomes")
    op.drop_table("fl_round_outcomes")
    op.drop_table("fl_node_bindings")
    op.drop_table("fl_runs")
