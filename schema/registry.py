"""The VAMN model registry: publish a version, promote it to active for its head, find what serves.

One model version is active per head type at a time; the cascade serves the active one of the
agent's primary head. A row names its weights only by checksum; the bytes live in the
content-addressed weights store (aggregation/weights_store.py).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schema import audit, events
from schema.errors import ConflictError, NotFoundError
from schema.models import VamnModelRegistry
from schema.timeutil import iso
from schema.validation import clean_name, one_of, parse_uuid
from schema.vocab import VAMN_HEAD_TYPES

PENDING, ACTIVE, RETIRED, REJECTED = "pending", "active", "retired", "rejected"


def publish(
    session: Session, *, model_name: str, model_version: str, head_type: str, weights_checksum: str
) -> VamnModelRegistry:
    """Add a pending, inactive version; it serves nothing until ``activate``."""
    name = clean_name(model_name, "model name", max_length=100)
    version = clean_name(model_version, "model version", max_length=50)
    one_of(head_type, VAMN_HEAD_TYPES, "head type")
    exists = select(VamnModelRegistry.id).where(
        VamnModelRegistry.model_name == name,
        VamnModelRegistry.model_version == version,
        VamnModelRegistry.head_type == head_type,
    )
    if session.scalar(exists) is not None:
        raise ConflictError(f"model {name} version {version} ({head_type}) is already published")
    row = VamnModelRegistry(
        model_name=name,
        model_version=version,
        head_type=head_type,
        weights_checksum=weights_checksum,
        is_active=False,
        deployment_status=PENDING,
    )
    session.add(row)
    session.flush()
    _audit(session, row, "registry.published")
    events.append(
        session,
        event_type="accute.model.published",
        organization_id=None,
        payload={
            "model_id": row.id,
            "head_type": row.head_type,
            "model_version": row.model_version,
            "weights_checksum": row.weights_checksum,
        },
    )
    return row


def get(session: Session, model_id: str | uuid.UUID) -> VamnModelRegistry:
    row = session.get(VamnModelRegistry, parse_uuid(model_id, "model id"))
    if row is None:
        raise NotFoundError(f"model {model_id} is not in the registry")
    return row


def active_for_head(session: Session, head_type: str) -> VamnModelRegistry | None:
    one_of(head_type, VAMN_HEAD_TYPES, "head type")
    query = select(VamnModelRegistry).where(
        VamnModelRegistry.head_type == head_type, VamnModelRegistry.is_active.is_(True)
    )
    return session.scalars(query.order_by(VamnModelRegistry.created_at.desc())).first()


def activate(session: Session, model_id: str | uuid.UUID) -> VamnModelRegistry:
    """Make this version the one that serves its head; the previous active one is retired."""
    row = get(session, model_id)
    previous = select(VamnModelRegistry).where(
        VamnModelRegistry.head_type == row.head_type,
        VamnModelRegistry.is_active.is_(True),
        VamnModelRegistry.id != row.id,
    )
    retired: list[uuid.UUID] = []
    for other in session.scalars(previous.with_for_update()):
        other.is_active = False
        other.deployment_status = RETIRED
        retired.append(other.id)
        _audit(session, other, "registry.retired")
    row.is_active = True
    row.deployment_status = ACTIVE
    session.flush()
    _audit(session, row, "registry.activated")
    events.append(
        session,
        event_type="accute.model.promoted",
        organization_id=None,
        payload={
            "model_id": row.id,
            "head_type": row.head_type,
            "model_version": row.model_version,
            "weights_checksum": row.weights_checksum,
            "retired_model_ids": retired,
        },
    )
    return row


def promote(session: Session, model_id: str | uuid.UUID, *, by: str | None = None) -> VamnModelRegistry:
    """An admin's promotion: ``activate`` (the previous active version retired) plus a record saying
    who asked. A rejected version may be promoted (the admin overrides the publish gate, on record);
    the active one is refused (nothing would change)."""
    row = get(session, model_id)
    if row.is_active:
        raise ConflictError(f"model {row.id} is already the active version of the {row.head_type} head")
    previous = active_for_head(session, row.head_type)
    activate(session, row.id)
    _audit(
        session,
        row,
        "registry.promoted",
        previous_id=None if previous is None else str(previous.id),
        by=by,
    )
    return row


def rollback(session: Session, head_type: str, *, by: str | None = None) -> VamnModelRegistry:
    """Serve the head's previously active version again (the one retired most recently, read from
    the audit chain's order, not from timestamps that may tie); the current one is retired."""
    from schema.models import ImmutableAuditLog

    one_of(head_type, VAMN_HEAD_TYPES, "head type")
    current = active_for_head(session, head_type)
    retired = (
        select(ImmutableAuditLog.resource_id)
        .where(
            ImmutableAuditLog.action == "registry.retired", ImmutableAuditLog.resource_type == "vamn_model"
        )
        .order_by(ImmutableAuditLog.id.desc())
    )
    for candidate_id in session.scalars(retired):
        candidate = session.get(VamnModelRegistry, candidate_id)
        if (
            candidate is not None
            and candidate.head_type == head_type
            and candidate.deployment_status == RETIRED
            and (current is None or candidate.id != current.id)
        ):
            activate(session, candidate.id)
            _audit(
                session,
                candidate,
                "registry.rolled_back",
                previous_id=None if current is None else str(current.id),
                by=by,
            )
            return candidate
    raise NotFoundError(f"the {head_type} head has no previously active version to roll back to")


def reject(session: Session, model_id: str | uuid.UUID, reason: str) -> VamnModelRegistry:
    """Keep a version that regressed on record, never serving it."""
    row = get(session, model_id)
    row.is_active = False
    row.deployment_status = REJECTED
    session.flush()
    _audit(session, row, "registry.rejected", reason=reason)
    return row


def as_dict(row: VamnModelRegistry) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "model_name": row.model_name,
        "model_version": row.model_version,
        "head_type": row.head_type,
        "weights_checksum": row.weights_checksum,
        "is_active": bool(row.is_active),
        "deployment_status": row.deployment_status,
        "created_at": iso(row.created_at),
    }


def _audit(session: Session, row: VamnModelRegistry, action: str, **extra: Any) -> None:
    audit.append(
        session,
        organization_id=None,
        action=action,
        resource_type="vamn_model",
        resource_id=row.id,
        data={"model_name": row.model_name, "model_version": row.model_version, "head_type": row.head_type}
        | extra,
    )
