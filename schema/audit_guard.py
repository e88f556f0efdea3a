"""The audit log's database guard (PostgreSQL, migration 0016) and its one documented way around.

On PostgreSQL, triggers on ``immutable_audit_log`` refuse every UPDATE, DELETE and TRUNCATE, from
the service and from anyone else, so a bug or a stolen service credential cannot rewrite history.
The exception is maintenance by the table's owner: a migration that must rewrite old payloads (as
0007 removed emails, then re-anchored the chain) calls :func:`maintenance` inside its transaction.
The trigger honours the setting only for a member of the owner role; a role that merely sets it
is refused. Run the service as a role that does not own the tables and neither the setting nor
``ALTER TABLE ... DISABLE TRIGGER`` is open to it. Whoever owns the table can always get around a
trigger; that is what the hash chain, the signed re-anchors and the exported anchors
(``schema.audit_anchors``) are for. SQLite has no guard: there the chain detects an edit.
"""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

MAINTENANCE_SETTING = "accute.audit_maintenance"


def maintenance(session: Session | Connection) -> None:
    """Allow the owner to change audit rows until this transaction ends (no-op on SQLite).

    Whatever is rewritten must end with an ``audit.reanchored`` record (``schema.audit.rechain``
    and ``reanchor_data``), so the rewrite is itself in the chain and its signature says who did it.
    """
    dialect = session.get_bind().dialect if isinstance(session, Session) else session.dialect
    if dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL {MAINTENANCE_SETTING} = 'on'"))
