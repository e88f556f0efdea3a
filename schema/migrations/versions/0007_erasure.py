"""Erasure: per-user data keys (crypto-shredding) and no emails left in the audit log.

Creates ``personal_data_keys``. Rewrites every existing ``user.created`` audit record that still
carries ``{"email": ...}`` under the new rule (ids only), then re-hashes each affected chain from
its first rewritten record and appends an ``audit.reanchored`` record (old head, migration,
rewritten ids, new head), bound by an HMAC keyed with the old head. It is a binding, not a
signature: the signing keys are wrapped by the KEK, which lives outside the database (a key file or
a PKCS#11 token named by the service's settings), and a migration runs on a bare database
connection. Migration 0012 adds the service's signatures beside the chain; ``accute-fl db upgrade``
signs this re-anchor when the KEK is configured, else ``accute-fl audit sign-reanchors`` does later.
``accute-fl audit verify`` checks the re-anchor records and reports unsigned ones.

Downgrade drops the table; the removed emails are not restored (the users table still holds the
current addresses; putting personal data back into an append-only log would undo the point).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from alembic import op

from schema import audit
from schema.timeutil import utcnow
from schema.types import InetType, JSONBType, TimestampTZ, UUIDType

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MIGRATION = "0007"
REASON = "personal data (email) removed from user.created payloads (issue 19)"

_audit = sa.table(
    "immutable_audit_log",
    sa.column("id", sa.Integer()),
    sa.column("organization_id", UUIDType),
    sa.column("user_id", UUIDType),
    sa.column("action", sa.String()),
    sa.column("resource_type", sa.String()),
    sa.column("resource_id", UUIDType),
    sa.column("action_data", JSONBType),
    sa.column("ip_address", InetType),
    sa.column("user_agent", sa.Text()),
    sa.column("previous_hash", sa.String()),
    sa.column("record_hash", sa.String()),
    sa.column("created_at", TimestampTZ),
)
# The columns as they are at this revision, frozen on purpose (not schema.audit's column list): a
# later migration may add a column to the table, and this one must still select only what exists
# when it runs. The hashing itself is imported: it must be what ``verify`` checks (schema.audit).
_FIELDS = (
    "id",
    "organization_id",
    "user_id",
    "action",
    "resource_type",
    "resource_id",
    "action_data",
    "ip_address",
    "user_agent",
    "previous_hash",
    "record_hash",
    "created_at",
)


def upgrade() -> None:
    op.create_table(
        "personal_data_keys",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("kek_version", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("shredded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_personal_data_keys_organization_id")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_personal_data_keys_user_id")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_personal_data_keys")),
    )
    op.create_index(
        op.f("ix_personal_data_keys_organization_id"), "personal_data_keys", ["organization_id"], unique=False
    )
    _remove_emails_from_audit(op.get_bind())


def downgrade() -> None:
    op.drop_index(op.f("ix_personal_data_keys_organization_id"), table_name="personal_data_keys")
    op.drop_table("personal_data_keys")


def _remove_emails_from_audit(connection: sa.Connection) -> None:
    affected = connection.execute(
        sa.select(_audit.c.organization_id).where(_audit.c.action == "user.created").distinct()
    ).scalars()
    for organization_id in list(affected):
        _rewrite_chain(connection, organization_id)


def _rewrite_chain(connection: sa.Connection, organization_id: uuid.UUID) -> None:
    rows = connection.execute(
        sa.select(*(_audit.c[f] for f in _FIELDS))
        .where(_audit.c.organization_id == organization_id)
        .order_by(_audit.c.id)
    ).all()
    chain = [SimpleNamespace(**row._asdict()) for row in rows]
    rewritten = [
        record
        for record in chain
        if record.action == "user.created" and "email" in (record.action_data or {})
    ]
    if not rewritten:
        return
    old_head = chain[-1].record_hash
    for record in rewritten:
        data = {k: v for k, v in record.action_data.items() if k != "email"}
        record.action_data = {**data, "email_removed_by_migration": MIGRATION}
    start = chain.index(rewritten[0])
    new_head = audit.rechain(chain, start)
    for record in chain[start:]:
        connection.execute(
            _audit.update()
            .where(_audit.c.id == record.id)
            .values(
                action_data=record.action_data,
                previous_hash=record.previous_hash,
                record_hash=record.record_hash,
            )
        )
    ids = [record.id for record in rewritten]
    anchor = SimpleNamespace(
        organization_id=organization_id,
        user_id=None,
        action=audit.REANCHOR_ACTION,
        resource_type="immutable_audit_log",
        resource_id=None,
        action_data=audit.reanchor_data(old_head, new_head, MIGRATION, REASON, ids),
        ip_address=None,
        user_agent=None,
        previous_hash=new_head,
        created_at=utcnow(),
    )
    values: dict[str, Any] = dict(vars(anchor))
    values["record_hash"] = audit.compute_hash(anchor)
    connection.execute(_audit.insert().values(**values))
