"""The dead man's switch acts, and the audit log is append-only in the database itself (issue 14).

- ``dead_man_switch_config.actions``: what the switch does when it fires (an extension after the
  spec's columns), and one config per organization (``uq_dms_config_org``).
- ``dead_man_switch_firings``: what a firing applied (training paused, provider configs and
  fallback disabled, data key rotated, contacts notified) until a platform admin reverses it; one
  unreversed firing per organization (partial unique index).
- ``audit_chain_anchors``: signed chain heads (``accute-fl audit anchor``), the spec's
  ``blockchain_tx_id`` role without a blockchain.
- PostgreSQL only: ``immutable_audit_log`` refuses UPDATE and DELETE (row trigger) and TRUNCATE
  (statement trigger) from everyone, and PUBLIC holds none of these privileges. The one way
  around is the maintenance path of ``schema.audit_guard``: ``SET LOCAL accute.audit_maintenance =
  'on'`` in the transaction, honoured only for a member of the table's owner role (a migration
  that rewrites old payloads and re-anchors, as 0007 did). DROP TABLE / DROP SCHEMA still work.
  SQLite has no such guard; there the hash chain and the anchors detect an edit.

Downgrade drops the triggers and their function, the two tables, the index and the column.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from schema.types import gen_random_uuid

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here (a migration's DDL must not change with later code); the setting's name is
# ``schema.audit_guard.MAINTENANCE_SETTING``.
UPGRADE_SQL = """
CREATE FUNCTION accute_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('accute.audit_maintenance', true), '') = 'on'
       AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
        IF TG_LEVEL = 'STATEMENT' THEN
            RETURN NULL;
        ELSIF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'immutable_audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit records are never changed; a migration that must rewrite them uses '
                     'schema.audit_guard.maintenance as the table owner and re-anchors the chain';
END
$$;
CREATE TRIGGER immutable_audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON immutable_audit_log
    FOR EACH ROW EXECUTE FUNCTION accute_audit_append_only();
CREATE TRIGGER immutable_audit_log_no_truncate
    BEFORE TRUNCATE ON immutable_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION accute_audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON immutable_audit_log FROM PUBLIC;
"""
DOWNGRADE_SQL = """
DROP TRIGGER IF EXISTS immutable_audit_log_no_truncate ON immutable_audit_log;
DROP TRIGGER IF EXISTS immutable_audit_log_no_update_delete ON immutable_audit_log;
DROP FUNCTION IF EXISTS accute_audit_append_only();
"""

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("dead_man_switch_config") as batch:
        batch.add_column(sa.Column("actions", _JSON, server_default=sa.text("'[]'"), nullable=False))
    op.create_index("uq_dms_config_org", "dead_man_switch_config", ["organization_id"], unique=True)
    op.create_table(
        "dead_man_switch_firings",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("config_id", sa.Uuid(), nullable=False),
        sa.Column("doom_timer_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("training_paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("providers_disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("fallback_disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("rotated_key_version", sa.Integer(), nullable=True),
        sa.Column("notified_contacts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("reversed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reversed_by", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["config_id"], ["dead_man_switch_config.id"], name=op.f("fk_dead_man_switch_firings_config_id")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_dead_man_switch_firings_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_man_switch_firings")),
    )
    op.create_index(
        "uq_dms_firing_unreversed",
        "dead_man_switch_firings",
        ["organization_id"],
        unique=True,
        postgresql_where=sa.text("reversed_at IS NULL"),
        sqlite_where=sa.text("reversed_at IS NULL"),
    )
    op.create_table(
        "audit_chain_anchors",
        sa.Column("id", _BIGINT, autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("record_id", _BIGINT, nullable=False),
        sa.Column("record_hash", sa.String(length=128), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("anchored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=20), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["kid"], ["audit_signing_keys.kid"], name=op.f("fk_audit_chain_anchors_kid")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_anchors")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPGRADE_SQL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DOWNGRADE_SQL)
    op.drop_table("audit_chain_anchors")
    op.drop_index("uq_dms_firing_unreversed", table_name="dead_man_switch_firings")
    op.drop_table("dead_man_switch_firings")
    op.drop_index("uq_dms_config_org", table_name="dead_man_switch_config")
    with op.batch_alter_table("dead_man_switch_config") as batch:
        batch.drop_column("actions")
