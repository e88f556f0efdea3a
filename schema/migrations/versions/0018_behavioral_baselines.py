"""Behavioural baselines: one row per user with the running mean and sum of squares of the
numeric session features (``orchestrator/security/biometrics.py``); the spec's
``behavioral_biometrics`` keeps only hashes, from which no baseline can be computed.

Downgrade drops the table (the baselines start again from the next sessions).

Revision ID: 0018
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0018"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONB = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "behavioral_baselines",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("feature_version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("sessions", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("counts", JSONB, nullable=False),
        sa.Column("mean", JSONB, nullable=False),
        sa.Column("m2", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_behavioral_baselines_organization_id")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_behavioral_baselines_user_id")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_behavioral_baselines")),
    )
    op.create_index(
        op.f("ix_behavioral_baselines_organization_id"), "behavioral_baselines", ["organization_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_behavioral_baselines_organization_id"), table_name="behavioral_baselines")
    op.drop_table("behavioral_baselines")
