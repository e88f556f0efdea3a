"""Units of privacy in the ledger, non-private events, and one node per organization per run.

- ``privacy_ledger_events.unit`` and ``privacy_budgets.unit`` ("record" | "user" | "tenant"):
  existing ``dp_sgd`` events were record-level DP-SGD ("record"), central events tenant-level
  ("tenant"). A budget is now unique per (organization, model type, unit); an existing budget
  becomes the "record" one, and where its ledger also holds central events a "tenant" budget with
  the same cap is added. Stored RDP curves are cleared: they mixed units, and the ledger rebuilds
  each unit's curve by replaying that unit's events.
- mechanism ``non_private`` (noise multiplier 0, epsilon +inf) for explicitly non-private runs.
- ``fl_node_bindings``: unique (run_id, organization_id); a run that had bound two nodes to one
  organization keeps the binding of the smaller node id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNITS = "unit IN ('record', 'user', 'tenant')"
NOISE_NEW = "(mechanism = 'non_private' AND noise_multiplier = 0) OR (mechanism <> 'non_private' AND noise_multiplier > 0)"


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("privacy_ledger_events") as batch:
        batch.add_column(sa.Column("unit", sa.String(length=10), nullable=True))
    bind.execute(
        sa.text(
            "UPDATE privacy_ledger_events SET unit = CASE WHEN mechanism = 'central_gaussian' "
            "THEN 'tenant' ELSE 'record' END"
        )
    )
    op.drop_index("idx_privacy_ledger_tenant", table_name="privacy_ledger_events")
    with op.batch_alter_table("privacy_ledger_events") as batch:
        batch.alter_column("unit", existing_type=sa.String(length=10), nullable=False)
        batch.drop_constraint(op.f("ck_privacy_ledger_events_mechanism"), type_="check")
        batch.drop_constraint(op.f("ck_privacy_ledger_events_noise_multiplier"), type_="check")
        batch.create_check_constraint(
            op.f("ck_privacy_ledger_events_mechanism"),
            "mechanism IN ('dp_sgd', 'central_gaussian', 'non_private')",
        )
        batch.create_check_constraint(op.f("ck_privacy_ledger_events_unit"), UNITS)
        batch.create_check_constraint(
            op.f("ck_privacy_ledger_events_central_unit"),
            "mechanism <> 'central_gaussian' OR unit = 'tenant'",
        )
        batch.create_check_constraint(
            op.f("ck_privacy_ledger_events_local_unit"), "mechanism <> 'dp_sgd' OR unit <> 'tenant'"
        )
        batch.create_check_constraint(op.f("ck_privacy_ledger_events_noise_multiplier"), NOISE_NEW)
    op.create_index(
        "idx_privacy_ledger_tenant",
        "privacy_ledger_events",
        ["organization_id", "model_type", "unit", "id"],
        unique=False,
    )

    with op.batch_alter_table("privacy_budgets") as batch:
        batch.add_column(sa.Column("unit", sa.String(length=10), nullable=True))
    bind.execute(
        sa.text("UPDATE privacy_budgets SET unit = 'record', rdp_curve = NULL, rdp_orders_key = NULL")
    )
    with op.batch_alter_table("privacy_budgets") as batch:
        batch.alter_column("unit", existing_type=sa.String(length=10), nullable=False)
        batch.drop_constraint(op.f("uq_privacy_budgets_organization_id"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_privacy_budgets_organization_id"), ["organization_id", "model_type", "unit"]
        )
        batch.create_check_constraint(op.f("ck_privacy_budgets_unit"), UNITS)

    budgets = bind.execute(
        sa.text("SELECT organization_id, model_type, epsilon_cap, delta FROM privacy_budgets")
    ).all()
    for organization_id, model_type, epsilon_cap, delta in budgets:
        central = bind.execute(
            sa.text(
                "SELECT count(*) FROM privacy_ledger_events WHERE organization_id = :o AND model_type = :m "
                "AND unit = 'tenant'"
            ),
            {"o": organization_id, "m": model_type},
        ).scalar_one()
        if central:
            bind.execute(
                sa.text(
                    "INSERT INTO privacy_budgets (id, organization_id, model_type, unit, epsilon_cap, delta, "
                    "event_count) VALUES (:id, :o, :m, 'tenant', :cap, :delta, 0)"
                ),
                {
                    "id": uuid.uuid4() if bind.dialect.name == "postgresql" else uuid.uuid4().hex,
                    "o": organization_id,
                    "m": model_type,
                    "cap": epsilon_cap,
                    "delta": delta,
                },
            )
    _recount(bind)
    # A run that bound two nodes to one organization keeps the binding of the smaller node id.
    bind.execute(
        sa.text(
            "DELETE FROM fl_node_bindings WHERE EXISTS (SELECT 1 FROM fl_node_bindings o WHERE "
            "o.run_id = fl_node_bindings.run_id AND o.organization_id = fl_node_bindings.organization_id "
            "AND o.node_id < fl_node_bindings.node_id)"
        )
    )
    with op.batch_alter_table("fl_node_bindings") as batch:
        batch.create_unique_constraint(
            op.f("uq_fl_node_bindings_run_id_organization_id"), ["run_id", "organization_id"]
        )


def _recount(bind: sa.engine.Connection) -> None:
    """Each budget row's event count and last round, from its own unit's events."""
    bind.execute(
        sa.text(
            "UPDATE privacy_budgets SET "
            "event_count = (SELECT count(*) FROM privacy_ledger_events e WHERE "
            "e.organization_id = privacy_budgets.organization_id AND e.model_type = privacy_budgets.model_type "
            "AND e.unit = privacy_budgets.unit), "
            "last_round = (SELECT max(e.aggregation_round) FROM privacy_ledger_events e WHERE "
            "e.organization_id = privacy_budgets.organization_id AND e.model_type = privacy_budgets.model_type "
            "AND e.unit = privacy_budgets.unit)"
        )
    )


def downgrade() -> None:
    """Back to one ledger per (organization, model type): units are dropped, so are non-private
    events (the old schema cannot hold them) and every budget row but the "record" one; the
    stored curves are cleared and rebuilt by replay of what remains."""
    bind = op.get_bind()
    with op.batch_alter_table("fl_node_bindings") as batch:
        batch.drop_constraint(op.f("uq_fl_node_bindings_run_id_organization_id"), type_="unique")

    bind.execute(sa.text("DELETE FROM privacy_ledger_events WHERE mechanism = 'non_private'"))
    bind.execute(sa.text("DELETE FROM privacy_budgets WHERE unit <> 'record'"))
    bind.execute(sa.text("UPDATE privacy_budgets SET rdp_curve = NULL, rdp_orders_key = NULL"))
    with op.batch_alter_table("privacy_budgets") as batch:
        batch.drop_constraint(op.f("ck_privacy_budgets_unit"), type_="check")
        batch.drop_constraint(op.f("uq_privacy_budgets_organization_id"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_privacy_budgets_organization_id"), ["organization_id", "model_type"]
        )
        batch.drop_column("unit")

    op.drop_index("idx_privacy_ledger_tenant", table_name="privacy_ledger_events")
    with op.batch_alter_table("privacy_ledger_events") as batch:
        batch.drop_constraint(op.f("ck_privacy_ledger_events_noise_multiplier"), type_="check")
        batch.drop_constraint(op.f("ck_privacy_ledger_events_local_unit"), type_="check")
        batch.drop_constraint(op.f("ck_privacy_ledger_events_central_unit"), type_="check")
        batch.drop_constraint(op.f("ck_privacy_ledger_events_unit"), type_="check")
        batch.drop_constraint(op.f("ck_privacy_ledger_events_mechanism"), type_="check")
        batch.create_check_constraint(
            op.f("ck_privacy_ledger_events_mechanism"), "mechanism IN ('dp_sgd', 'central_gaussian')"
        )
        batch.create_check_constraint(
            op.f("ck_privacy_ledger_events_noise_multiplier"), "noise_multiplier > 0"
        )
        batch.drop_column("unit")
    op.create_index(
        "idx_privacy_ledger_tenant",
        "privacy_ledger_events",
        ["organization_id", "model_type", "id"],
        unique=False,
    )
    bind.execute(
        sa.text(
            "UPDATE privacy_budgets SET event_count = (SELECT count(*) FROM privacy_ledger_events e WHERE "
            "e.organization_id = privacy_budgets.organization_id AND e.model_type = privacy_budgets.model_type)"
        )
    )
