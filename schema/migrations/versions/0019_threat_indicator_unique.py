"""Threat indicators are unique on (indicator_type, indicator_value, source): the database, not
only the importer's read-then-write, keeps a feed imported twice (or by two processes at once)
from adding a row (``uq_threat_indicator_source``; ``threat import`` inserts with
``ON CONFLICT DO NOTHING`` on it).

Upgrade first merges the duplicates an earlier concurrent import may have left: per key the row
with the latest ``last_seen`` survives (ties: the highest ``confidence``, then the latest
``updated_at``, then the greatest id), with ``first_seen`` widened to the group's earliest; the
other rows are deleted. Downgrade drops the index (merged duplicates stay merged: they said the
same thing).

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "indicator_type, indicator_value, source"
SAME_KEY = (
    "d.indicator_type = t.indicator_type AND d.indicator_value = t.indicator_value AND d.source = t.source"
)


def upgrade() -> None:
    op.execute(
        f"""
        UPDATE threat_intelligence AS t
        SET first_seen = (SELECT MIN(d.first_seen) FROM threat_intelligence AS d WHERE {SAME_KEY})
        WHERE EXISTS (SELECT 1 FROM threat_intelligence AS d WHERE {SAME_KEY} AND d.id <> t.id)
        """
    )
    op.execute(
        f"""
        DELETE FROM threat_intelligence WHERE id IN (
            SELECT id FROM (
                SELECT id, ROW_NUMBER() OVER (
                    PARTITION BY {KEY}
                    ORDER BY last_seen DESC, confidence DESC, updated_at DESC, id DESC
                ) AS keep_rank
                FROM threat_intelligence
            ) AS ranked
            WHERE keep_rank > 1
        )
        """
    )
    op.create_index(
        "uq_threat_indicator_source",
        "threat_intelligence",
        ["indicator_type", "indicator_value", "source"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_threat_indicator_source", table_name="threat_intelligence")
