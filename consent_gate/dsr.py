"""Data subject requests (GDPR/CCPA): file, list, process.

- Filing sets the deadline to filing time + 30 days. An ``erasure``, ``restriction`` or
  ``objection`` excludes the user from every consent snapshot from the moment it is filed (see
  consent_gate.gate); a rejected one stops excluding.
- Processing completes (or, with a reason, rejects) an open request:
  ``access`` / ``portability``: a JSON export of everything the product holds about the user
  (profile, consents and their history, requests, the rounds and model versions whose snapshots
  contained the user), stored in ``response_details`` and returned;
  ``rectification``: corrects the user's email (the one profile field the product holds);
  ``restriction`` / ``objection``: withdraws every training consent the policy knows, so the user
  stays out of snapshots until they grant again themselves;
  ``erasure``: walks every store of ``consent_gate.erasure`` (consents withdrawn and wiped, free
  text emptied, exports redacted, usage and agent sessions detached, sessions, biometrics and
  devices deleted, the user's data key shredded so sealed audit values become unreadable, the
  email anonymized) and reports each store in ``response_details``; the snapshot memberships stay
  (pseudonymous ids), so the admin still sees which model versions were trained with the user. A
  completed erasure excludes the user from snapshots for good. The access export lists the same
  stores with what each holds.
- Every state change appends an audit record (never the export, an email or free text: a
  rejection reason is sealed under the subject's data key when a ``vault`` is given, else left out).

API (caller's transaction):
    file_request(session, organization_id, user_id, request_type, details=None) -> DataSubjectRequest
    list_requests(session, organization_id=None, status=None) -> list[DataSubjectRequest]
    get_request(session, request_id, organization_id=None) -> DataSubjectRequest
    process_request(session, request_id, *, organization_id=None, reject_reason=None,
                    processed_by=None, rectified_email=None, policy=None, vault=None) -> DataSubjectRequest
    export_user_data(session, organization_id, user_id) -> dict
    request_as_dict(request, include_response=True) -> dict
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from consent_gate import erasure, records, scope
from consent_gate.gate import OPEN_REQUEST_STATUSES
from consent_gate.lineage import model_versions, user_lineage
from consent_gate.policy import ConsentPolicy
from schema import audit, events
from schema.directory import user_as_dict
from schema.errors import ConflictError, InvalidInputError, NotFoundError
from schema.listings import is_overdue as is_overdue
from schema.listings import request_as_dict as request_as_dict
from schema.listings import requests_query
from schema.models import DataSubjectRequest, User
from schema.personal_data import PersonalDataVault
from schema.timeutil import iso, utcnow
from schema.validation import clean_email, clean_name, one_of, parse_uuid
from schema.vocab import DSR_REQUEST_TYPES

DEADLINE = timedelta(days=30)
EXPORT_FORMAT = "accute-data-export/1"
ERASED_EMAIL_DOMAIN = erasure.ERASED_EMAIL_DOMAIN


def file_request(
    session: Session,
    organization_id: str | uuid.UUID,
    user_id: str | uuid.UUID,
    request_type: str,
    details: dict[str, Any] | None = None,
) -> DataSubjectRequest:
    """File a request for the user; refuses a second open request of the same type."""
    one_of(request_type, DSR_REQUEST_TYPES, "request type")
    user = scope.member(session, organization_id, user_id)
    duplicate = select(DataSubjectRequest.id).where(
        DataSubjectRequest.organization_id == user.organization_id,
        DataSubjectRequest.user_id == user.id,
        DataSubjectRequest.request_type == request_type,
        DataSubjectRequest.status.in_(OPEN_REQUEST_STATUSES),
    )
    open_id = session.scalar(duplicate)
    if open_id is not None:
        raise ConflictError(
            f"user {user.id} already has an open {request_type} request {open_id}; process it"
        )
    now = utcnow()
    request = DataSubjectRequest(
        organization_id=user.organization_id,
        user_id=user.id,
        request_type=request_type,
        status="pending",
        request_details=dict(details or {}),
        deadline=now + DEADLINE,
        created_at=now,
    )
    session.add(request)
    session.flush()
    _audit(session, request, "dsr.filed", {"deadline": iso(request.deadline)})
    events.append(
        session,
        event_type="accute.dsr.filed",
        organization_id=request.organization_id,
        payload={
            "request_id": request.id,
            "user_id": request.user_id,
            "request_type": request.request_type,
            "deadline": request.deadline,
        },
    )
    return request


def list_requests(
    session: Session, organization_id: str | uuid.UUID | None = None, status: str | None = None
) -> list[DataSubjectRequest]:
    """Requests by deadline (soonest first), optionally of one organization and one status."""
    org_id = None if organization_id is None else scope.organization(session, organization_id).id
    query = requests_query(org_id, status)
    return list(session.scalars(select(DataSubjectRequest).from_statement(query)))


def get_request(
    session: Session, request_id: str | uuid.UUID, organization_id: str | uuid.UUID | None = None
) -> DataSubjectRequest:
    rid = parse_uuid(request_id, "request id")
    request = session.get(DataSubjectRequest, rid, with_for_update=True)
    if organization_id is not None:
        org_id = scope.organization(session, organization_id).id
        if request is not None and request.organization_id != org_id:
            request = None  # another tenant's request is reported as missing
    if request is None:
        raise NotFoundError(f"data subject request {rid} does not exist; see `accute-fl dsr list`")
    return request


def process_request(
    session: Session,
    request_id: str | uuid.UUID,
    *,
    organization_id: str | uuid.UUID | None = None,
    reject_reason: str | None = None,
    processed_by: str | uuid.UUID | None = None,
    rectified_email: str | None = None,
    policy: ConsentPolicy | None = None,
    vault: PersonalDataVault | None = None,
) -> DataSubjectRequest:
    """Carry out an open request and complete it, or reject it with ``reject_reason``."""
    reason = None if reject_reason is None else clean_name(reject_reason, "rejection reason", 500)
    email = None if rectified_email is None else clean_email(rectified_email)
    request = get_request(session, request_id, organization_id)
    if request.status not in OPEN_REQUEST_STATUSES:
        raise ConflictError(f"data subject request {request.id} is already {request.status}; nothing to do")
    processor = None if processed_by is None else scope.member(session, request.organization_id, processed_by)
    user = scope.member(session, request.organization_id, request.user_id)
    if reason is not None:
        response: dict[str, Any] = {"rejected": reason}
        status, summary = "rejected", {}
        if vault is not None:
            summary["reason_sealed"] = vault.seal(session, user.organization_id, user.id, "reason", reason)
    else:
        response, summary = _carry_out(session, request, user, email, policy or ConsentPolicy.default())
        status = "completed"
    request.status = status
    request.response_details = response
    request.completed_at = utcnow()
    request.processed_by = None if processor is None else processor.id
    session.flush()
    _audit(session, request, f"dsr.{status}", summary)
    # One event for both ends (status says which): the hub's products act on a completed erasure.
    events.append(
        session,
        event_type="accute.dsr.completed",
        organization_id=request.organization_id,
        payload={
            "request_id": request.id,
            "user_id": request.user_id,
            "request_type": request.request_type,
            "status": status,
        },
    )
    return request


def _carry_out(
    session: Session, request: DataSubjectRequest, user: User, email: str | None, policy: ConsentPolicy
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Do what the request asks; returns (response_details, audit summary without personal data)."""
    kind = request.request_type
    if kind in ("access", "portability"):
        export = export_user_data(session, user.organization_id, user.id)
        return {"format": "application/json", "export": export}, {"exported": True}
    if kind == "rectification":
        if email is None:
            raise InvalidInputError("a rectification request needs the corrected email; pass --email")
        _rectify_email(session, user, email)
        return {"rectified": ["email"]}, {"rectified": ["email"]}
    if kind in ("restriction", "objection"):
        withdrawn = _withdraw(session, user, request, policy.training_consents())
        return {"withdrawn_consents": withdrawn}, {"withdrawn_consents": withdrawn}
    return _erase(session, request, user)


def _withdraw(
    session: Session, user: User, request: DataSubjectRequest, consent_types: tuple[str, ...] | None
) -> list[str]:
    current = records.current_consents(session, user.organization_id, user.id)
    granted = [c.consent_type for c in current if c.consent_given]
    withdrawn = []
    for consent_type in granted:
        if consent_types is not None and consent_type not in consent_types:
            continue
        change = records.withdraw(
            session,
            user.organization_id,
            user.id,
            consent_type,
            reason=f"dsr:{request.request_type}:{request.id}",
        )
        if change.changed:
            withdrawn.append(consent_type)
    return withdrawn


def _rectify_email(session: Session, user: User, email: str) -> None:
    taken = select(User.id).where(
        User.organization_id == user.organization_id, User.email == email, User.id != user.id
    )
    if session.scalar(taken) is not None:
        raise ConflictError(f"another user of organization {user.organization_id} already has that email")
    user.email = email


def _erase(
    session: Session, request: DataSubjectRequest, user: User
) -> tuple[dict[str, Any], dict[str, Any]]:
    stores = erasure.erase(session, request, user)
    lineage = user_lineage(session, user.organization_id, user.id)
    versions = model_versions(lineage)
    withdrawn = stores["user_consents"].get("withdrawn", [])
    kept = {"snapshots_containing_user": len(lineage), "model_versions_trained_with_user": versions}
    summary = {
        "stores": {name: {"rows": done.get("rows", 0)} for name, done in stores.items()},
        "consents_withdrawn": withdrawn,
        "model_versions": len(versions),
    }
    return {"erased": {"email": "anonymized", "stores": stores}, "lineage_kept": kept}, summary


def export_user_data(
    session: Session, organization_id: str | uuid.UUID, user_id: str | uuid.UUID
) -> dict[str, Any]:
    """Everything the product holds about the user, as JSON-ready data."""
    user = scope.member(session, organization_id, user_id)
    org_id = user.organization_id
    requests = session.scalars(
        select(DataSubjectRequest)
        .where(DataSubjectRequest.organization_id == org_id, DataSubjectRequest.user_id == user.id)
        .order_by(DataSubjectRequest.created_at, DataSubjectRequest.id)
    )
    return {
        "format": EXPORT_FORMAT,
        "generated_at": iso(utcnow()),
        "user": user_as_dict(user),
        "consents": [records.consent_as_dict(c) for c in records.current_consents(session, org_id, user.id)],
        "consent_history": [records.event_as_dict(e) for e in records.history(session, org_id, user.id)],
        "data_subject_requests": [request_as_dict(r, include_response=False) for r in requests],
        "training_lineage": user_lineage(session, org_id, user.id),
        "stores": erasure.describe(session, user),
    }


def _audit(session: Session, request: DataSubjectRequest, action: str, data: dict[str, Any]) -> None:
    audit.append(
        session,
        organization_id=request.organization_id,
        action=action,
        resource_type="data_subject_request",
        resource_id=request.id,
        user_id=request.user_id,
        data={"request_type": request.request_type, "status": request.status, **data},
    )
