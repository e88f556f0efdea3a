"""TOTP second factor and the cross-worker security generation (issue 14).

- ``user_mfa``: one row per enrolled user, the TOTP secret sealed under the user's personal data
  key and the last accepted time step (replay protection);
- ``security_generation``: one row (id 1) whose counter grows when a block is raised or an
  anomaly resolved; workers poll it to pick such changes up within a fraction of a second.

Downgrade drops both tables (enrolled users enrol again; workers fall back to the timed refresh).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_mfa",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("method", sa.String(length=20), server_default=sa.text("'totp'"), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_user_mfa_organization_id")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_mfa_user_id")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_mfa")),
    )
    op.create_index(op.f("ix_user_mfa_organization_id"), "user_mfa", ["organization_id"])
    generation = op.create_table(
        "security_generation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_generation")),
    )
    op.bulk_insert(generation, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("security_generation")
    op.drop_index(op.f("ix_user_mfa_organization_id"), table_name="user_mfa")
    op.drop_table("user_mfa")
