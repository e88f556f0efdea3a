"""Inference cascade hardening: idempotency per caller with a request hash; exact billing sums.

- ``llm_requests``: ``caller`` (SHA-256 of the token subject that sent the request) and
  ``request_hash`` (SHA-256 of what was asked); the request id is unique per (organization,
  caller, request id), so another user of the organization reusing an id never receives the
  first user's answer, and the same caller reusing an id for a different request gets 409.
- ``fallback_billing.total_cost_exact_usd``: the exact sum of the month's charges (12 decimals);
  ``total_cost_usd`` is that sum rounded once, half up, to 4 decimals (the invoice line).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("llm_requests") as batch:
        batch.add_column(
            sa.Column("caller", sa.String(length=64), server_default=sa.text("''"), nullable=False)
        )
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.drop_constraint("uq_llm_requests_organization_id", type_="unique")
        batch.create_unique_constraint(
            "uq_llm_requests_organization_id", ["organization_id", "caller", "request_id"]
        )
    with op.batch_alter_table("fallback_billing") as batch:
        batch.add_column(
            sa.Column("total_cost_exact_usd", sa.Numeric(24, 12), server_default=sa.text("0"), nullable=False)
        )
    op.execute("UPDATE fallback_billing SET total_cost_exact_usd = total_cost_usd")


def downgrade() -> None:
    with op.batch_alter_table("fallback_billing") as batch:
        batch.drop_column("total_cost_exact_usd")
    # Ids that became distinct per caller may collide again: keep the oldest of each.
    op.execute(
        "DELETE FROM llm_requests WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
        "(PARTITION BY organization_id, request_id ORDER BY created_at, id) AS n FROM llm_requests) AS r "
        "WHERE n > 1)"
    )
    with op.batch_alter_table("llm_requests") as batch:
        batch.drop_constraint("uq_llm_requests_organization_id", type_="unique")
        batch.create_unique_constraint("uq_llm_requests_organization_id", ["organization_id", "request_id"])
        batch.drop_column("request_hash")
        batch.drop_column("caller")
