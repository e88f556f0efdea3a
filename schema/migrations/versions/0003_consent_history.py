"""Consent history and snapshot lineage.

consent_events (every grant and withdrawal), consent_snapshots with their members and uses
(which rounds and model versions trained on which users), and a partial covering index on
user_consents for the snapshot query.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from schema.types import gen_random_uuid

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consent_events",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("consent_type", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("consent_version", sa.String(length=50), nullable=False),
        sa.Column(
            "ip_address", sa.String(length=45).with_variant(postgresql.INET(), "postgresql"), nullable=True
        ),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_consent_events_organization_id")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_consent_events_user_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_events")),
    )
    op.create_index(
        "idx_consent_events_user",
        "consent_events",
        ["organization_id", "user_id", "occurred_at"],
        unique=False,
    )

    op.create_table(
        "consent_snapshots",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("model_type", sa.String(length=100), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column(
            "required_consents",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("user_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_consent_snapshots_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_snapshots")),
        sa.UniqueConstraint("digest", name=op.f("uq_consent_snapshots_digest")),
    )
    op.create_index(
        "idx_consent_snapshots_org", "consent_snapshots", ["organization_id", "model_type"], unique=False
    )

    # Bulk-written (one row per consenting user): no foreign keys, the primary key is the one index.
    op.create_table(
        "consent_snapshot_members",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("snapshot_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "snapshot_id", name=op.f("pk_consent_snapshot_members")),
    )

    op.create_table(
        "consent_snapshot_uses",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("snapshot_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("aggregation_round", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=100), nullable=True),
        sa.Column("model_name", sa.String(length=100), nullable=True),
        sa.Column("model_version", sa.String(length=50), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_consent_snapshot_uses_organization_id")
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"], ["consent_snapshots.id"], name=op.f("fk_consent_snapshot_uses_snapshot_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_snapshot_uses")),
    )
    op.create_index("idx_snapshot_uses_run", "consent_snapshot_uses", ["run_id"], unique=False)
    op.create_index("idx_snapshot_uses_snapshot", "consent_snapshot_uses", ["snapshot_id"], unique=False)

    # The snapshot query's index: granted consents by organization and type, covering the columns
    # the digest needs, so PostgreSQL answers it with an index-only scan.
    op.create_index(
        "idx_consents_granted",
        "user_consents",
        ["organization_id", "consent_type", "user_id"],
        unique=False,
        postgresql_include=["consent_version", "given_at"],
        postgresql_where=sa.text("consent_given = true"),
        sqlite_where=sa.text("consent_given = 1"),
    )


def downgrade() -> None:
    op.drop_index("idx_consents_granted", table_name="user_consents")
    op.drop_index("idx_snapshot_uses_snapshot", table_name="consent_snapshot_uses")
    op.drop_index("idx_snapshot_uses_run", table_name="consent_snapshot_uses")
    op.drop_table("consent_snapshot_uses")
    op.drop_table("consent_snapshot_members")
    op.drop_index("idx_consent_snapshots_org", table_name="consent_snapshots")
    op.drop_table("consent_snapshots")
    op.drop_index("idx_consent_events_user", table_name="consent_events")
    op.drop_table("consent_events")
