"""Round attempts, the run lease and outlier flags.

- ``fl_runs.attempt``: how many times a server started or resumed the run; ``lease_owner``,
  ``heartbeat_at`` and ``lease_expires_at``: the one server that may judge and commit its rounds.
- ``fl_round_outcomes.attempt``: the attempt that wrote the row, unique per (run, round,
  organization, attempt); earlier attempts' rows of an unfinished round become ``aborted`` on
  resume. ``outlier``: a robust aggregator flagged the update.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fl_runs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("lease_owner", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("fl_round_outcomes") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False))
        batch.add_column(sa.Column("outlier", sa.Boolean(), server_default=sa.false(), nullable=False))
    # Rows written before attempts existed may repeat (run, round, organization): number them.
    op.execute(
        "UPDATE fl_round_outcomes SET attempt = (SELECT n FROM (SELECT id, ROW_NUMBER() OVER "
        "(PARTITION BY run_id, aggregation_round, organization_id ORDER BY created_at, id) AS n "
        "FROM fl_round_outcomes) AS r WHERE r.id = fl_round_outcomes.id)"
    )
    op.execute("UPDATE fl_runs SET attempt = 1")
    with op.batch_alter_table("fl_round_outcomes") as batch:
        batch.create_unique_constraint(
            "uq_fl_round_outcomes_attempt", ["run_id", "aggregation_round", "organization_id", "attempt"]
        )


def downgrade() -> None:
    with op.batch_alter_table("fl_round_outcomes") as batch:
        batch.drop_constraint("uq_fl_round_outcomes_attempt", type_="unique")
        batch.drop_column("outlier")
        batch.drop_column("attempt")
    with op.batch_alter_table("fl_runs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("heartbeat_at")
        batch.drop_column("lease_owner")
        batch.drop_column("attempt")
