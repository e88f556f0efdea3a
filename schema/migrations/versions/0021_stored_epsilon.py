"""The ledger's epsilon stored with its curve (issue 16): four nullable columns on ``privacy_budgets``.

- ``epsilon_spent``: what the ``rdp`` accountant computed for the row's ``rdp_curve`` when the
  charge that wrote the curve ran (or a cap change recomputed it);
- ``epsilon_delta``, ``epsilon_key``, ``epsilon_event_count``: what that number depends on (the
  delta, the accountant's conversion and order grid, the ledger's length). A reader uses the
  stored epsilon only when all three match what it would compute with; otherwise it evaluates
  the curve as before.

Existing rows get NULLs (nothing is computed here): their epsilon is evaluated from the curve until
their next charge or cap change. Downgrade drops the four columns.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("epsilon_spent", "epsilon_delta", "epsilon_key", "epsilon_event_count")


def upgrade() -> None:
    # Plain ALTER TABLE on both backends: nullable columns without constraints (SQLite >= 3.35
    # drops such columns in place, so no table copy is needed either way).
    op.add_column("privacy_budgets", sa.Column("epsilon_spent", sa.Double(), nullable=True))
    op.add_column("privacy_budgets", sa.Column("epsilon_delta", sa.Double(), nullable=True))
    op.add_column("privacy_budgets", sa.Column("epsilon_key", sa.String(length=64), nullable=True))
    op.add_column("privacy_budgets", sa.Column("epsilon_event_count", sa.Integer(), nullable=True))


def downgrade() -> None:
    for name in reversed(_COLUMNS):
        op.drop_column("privacy_budgets", name)
