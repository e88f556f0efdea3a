"""Orchestrator: tables of the inference cascade service (issue 7).

organization_data_keys (per-organization AES-256 data keys wrapped by the KEK),
service_signing_keys (RS256 JWT signing keys, private halves wrapped by the KEK) and
llm_requests (one row per answered chat request id: idempotent usage logging and billing).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from schema.types import gen_random_uuid

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONB = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "organization_data_keys",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("kek_version", sa.String(length=100), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("rewrapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_organization_data_keys_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organization_data_keys")),
        sa.UniqueConstraint(
            "organization_id", "version", name=op.f("uq_organization_data_keys_organization_id")
        ),
    )
    op.create_table(
        "service_signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("public_pem", sa.Text(), nullable=False),
        sa.Column("private_wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("kek_version", sa.String(length=100), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_service_signing_keys")),
    )
    op.create_table(
        "llm_requests",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("agent_slug", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=50), nullable=False),
        sa.Column("response_json", JSONB, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_llm_requests_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_requests")),
        sa.UniqueConstraint("organization_id", "request_id", name=op.f("uq_llm_requests_organization_id")),
    )


def downgrade() -> None:
    op.drop_table("llm_requests")
    op.drop_table("service_signing_keys")
    op.drop_table("organization_data_keys")
