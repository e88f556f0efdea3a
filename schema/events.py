"""Append a hub event to the outbox inside the caller's transaction (the transactional outbox).

The change and its event commit or roll back together: an event is never published for a change
that rolled back, never lost for one that committed. ``append`` validates the payload against its
type's model (``schema.hub_events``) and adds a ``hub_outbox`` row, as ``schema.audit.append`` adds
an audit record; nothing here talks to a broker. The relay (``orchestrator/hub``) reads pending
rows, publishes ``envelope(row)`` and marks them.

Kept small and free of the orchestrator so that ``privacy``, ``consent_gate``, ``fl_server`` and
``schema.registry`` can emit events. The cost per event is one validated pydantic model and one
INSERT in a transaction that is writing anyway (rows of one flush go in one batched statement).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, bindparam, insert
from sqlalchemy.orm import Session

from schema import audit
from schema.errors import InvalidInputError
from schema.hub_events import EventPayload, EventType, event_type
from schema.models import HubOutbox
from schema.timeutil import as_utc, iso, utcnow

SOURCE = "accute"


def validate(name: str, payload: Mapping[str, Any] | EventPayload) -> dict[str, Any]:
    """The payload as JSON-ready data after validation against ``name``'s model.

    Raises ``InvalidInputError`` for an unknown field (personal data included) or a wrong value,
    naming the event type and the fields; a ``KeyError`` for an unregistered type.
    """
    spec = event_type(name)
    try:
        model = payload if isinstance(payload, spec.model) else spec.model.model_validate(dict(payload))
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "payload" for e in exc.errors())
        raise InvalidInputError(
            f"hub event {name} has an invalid payload ({fields}); send only the fields of its model"
        ) from None
    except TypeError:
        raise InvalidInputError(f"hub event {name} payload is not an object; send a mapping") from None
    return model.model_dump(mode="json")


def append(
    session: Session,
    *,
    event_type: str,
    organization_id: uuid.UUID | None,
    payload: Mapping[str, Any] | EventPayload,
    correlation_id: str | None = None,
) -> uuid.UUID:
    """Add one event to the outbox in the caller's transaction (written, not committed); its event_id.

    ``organization_id`` is the tenant (``tenant_id``); None for a platform event. A tenant event
    without one, or a platform event with one, is a programming error (ValueError). Without a
    ``correlation_id`` the event correlates with itself (its event_id), as the spec's client does.
    Written with ``append_on`` on the session's connection: the ORM's flush cost about 1 ms an event.
    """
    audit.flush_pending(session)
    return append_on(
        session.connection(),
        event_type=event_type,
        organization_id=organization_id,
        payload=payload,
        correlation_id=correlation_id,
    )


def append_on(
    connection: Connection,
    *,
    event_type: str,
    organization_id: uuid.UUID | None,
    payload: Mapping[str, Any] | EventPayload,
    correlation_id: str | None = None,
) -> uuid.UUID:
    """``append`` for code that writes through a Core connection (the accounting group commit)."""
    values = row_values(event_type, organization_id, payload, correlation_id)
    connection.execute(_insert_row(tuple(values)), values)
    event_id: uuid.UUID = values["event_id"]
    return event_id


@cache
def _insert_row(columns: tuple[str, ...]) -> Any:
    """The outbox insert with a parameter per column of ``row_values``, built once (a statement
    built per event cost more than running it)."""
    return insert(HubOutbox).values({name: bindparam(name) for name in columns})


def row_values(
    event_type: str,
    organization_id: uuid.UUID | None,
    payload: Mapping[str, Any] | EventPayload,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """The columns of a new pending outbox row, after validating the payload."""
    spec = _spec(event_type, organization_id)
    data = validate(event_type, payload)
    event_id = uuid.uuid4()
    now = utcnow()
    return {
        "event_id": event_id,
        "event_type": spec.name,
        "schema_version": spec.version,
        "organization_id": organization_id,
        "correlation_id": (correlation_id or str(event_id))[:100],
        "payload": data,
        "occurred_at": now,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
    }


def _spec(name: str, organization_id: uuid.UUID | None) -> EventType:
    spec = event_type(name)
    if spec.tenant and organization_id is None:
        raise ValueError(f"hub event {name} belongs to a tenant; pass its organization_id")
    if not spec.tenant and organization_id is not None:
        raise ValueError(f"hub event {name} is a platform event; pass organization_id=None")
    return spec


def envelope(row: HubOutbox) -> dict[str, Any]:
    """The message the hub receives, as the spec's ``publishEvent`` body plus ``event_id`` and version.

    ``timestamp`` is when the change happened (the outbox row's ``occurred_at``), not when the relay
    got to it, so a retried event keeps its time.
    """
    return {
        "source": SOURCE,
        "event_type": row.event_type,
        "tenant_id": str(row.organization_id) if row.organization_id is not None else None,
        "payload": row.payload,
        "correlation_id": row.correlation_id,
        "timestamp": iso(as_utc(row.occurred_at)),
        "event_id": str(row.event_id),
        "schema_version": row.schema_version,
    }
