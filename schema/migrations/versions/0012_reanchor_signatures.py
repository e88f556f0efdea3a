"""Signed re-anchors: the service's audit signing keys and one signature per re-anchor record.

Creates ``audit_signing_keys`` (Ed25519, private half wrapped by the KEK) and
``audit_reanchor_signatures``. Signs nothing itself: a migration runs on a bare database connection,
possibly where the KEK is not reachable. ``accute-fl db upgrade`` signs the pending re-anchors (those
of 0007 included) right after migrating when the KEK is configured; elsewhere they stay unsigned,
``accute-fl audit verify`` reports them, and ``accute-fl audit sign-reanchors`` signs them later.

Downgrade drops both tables (the re-anchor records themselves stay in the chain, unsigned again).

Revision ID: 0012
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("private_wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("kek_version", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_audit_signing_keys")),
    )
    op.create_table(
        "audit_reanchor_signatures",
        sa.Column(
            "record_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=20), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["kid"], ["audit_signing_keys.kid"], name=op.f("fk_audit_reanchor_signatures_kid")
        ),
        sa.ForeignKeyConstraint(
            ["record_id"], ["immutable_audit_log.id"], name=op.f("fk_audit_reanchor_signatures_record_id")
        ),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_audit_reanchor_signatures")),
    )


def downgrade() -> None:
    op.drop_table("audit_reanchor_signatures")
    op.drop_table("audit_signing_keys")
