"""``security_anomalies`` rows: record a finding (deduplicated), read what is blocked, review, resolve.

Shared by the HTTP service's recorder (``orchestrator.security.anomalies``) and the round driver
(``fl_server.anomalies``), in the caller's transaction, like ``schema.audit``.

A row's ``details`` always carries:

- ``subject``: who or what it is about, ``address:<ip>``, ``principal:<token sub>``,
  ``user:<uuid>`` or ``org:<uuid>`` (the zero-trust layer looks rows up by it);
- ``detector`` (the policy rule that fired), ``count`` (how many times it fired while the row
  was open), ``first_seen`` and ``last_seen`` (ISO-8601 UTC);
- when ``auto_blocked``: ``blocked_until`` (ISO-8601 UTC); the subject is refused until then or
  until an admin resolves the row, whichever comes first;
- ``address`` when the finding came with a client address, and the detector's own evidence.

Deduplication: one open (not reviewed) row per (organization, type, subject) per ``window``;
a finding inside it increments ``count``, refreshes ``last_seen`` and the evidence, raises the
severity if higher and extends a block, instead of adding a row. Findings about no organization
(a bad token names none) go under the nil UUID, as system-wide audit records do: visible to
platform admins only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schema import audit, security_generation
from schema.errors import ConflictError, InvalidInputError, NotFoundError
from schema.models import SecurityAnomaly
from schema.timeutil import as_utc, iso, utcnow
from schema.vocab import ANOMALY_TYPES, SEVERITIES

SYSTEM_ORGANIZATION = audit.SYSTEM_ORGANIZATION
RESOLUTION_MAX = 50
STATUSES = ("open", "resolved", "all")


@dataclass(frozen=True)
class Finding:
    """What a detector saw; ``block_s`` set means the policy blocks ``subject`` that long."""

    detector: str
    anomaly_type: str
    severity: str
    subject: str
    organization_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    confidence: float | None = None
    block_s: int | None = None
    at: datetime | None = None
    window_s: int = 3600

    def __post_init__(self) -> None:
        if self.anomaly_type not in ANOMALY_TYPES:
            raise ValueError(f"unknown anomaly type {self.anomaly_type}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity}")


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def _open_row(session: Session, finding: Finding, org: uuid.UUID, now: datetime) -> SecurityAnomaly | None:
    since = now - timedelta(seconds=finding.window_s)
    return session.scalars(
        select(SecurityAnomaly)
        .where(
            SecurityAnomaly.organization_id == org,
            SecurityAnomaly.anomaly_type == finding.anomaly_type,
            SecurityAnomaly.reviewed_at.is_(None),
            SecurityAnomaly.created_at >= since,
            SecurityAnomaly.details["subject"].as_string() == finding.subject,
        )
        .order_by(SecurityAnomaly.created_at.desc())
        .limit(1)
    ).first()


def record(session: Session, finding: Finding) -> tuple[SecurityAnomaly, bool]:
    """Write ``finding`` (a new row, or the open row of its kind bumped); returns (row, created)."""
    now = finding.at or utcnow()
    org = finding.organization_id or SYSTEM_ORGANIZATION
    stamp = iso(now)
    blocked_until = iso(now + timedelta(seconds=finding.block_s)) if finding.block_s else None
    confidence = None if finding.confidence is None else Decimal(f"{min(max(finding.confidence, 0), 1):.4f}")
    row = _open_row(session, finding, org, now)
    if row is not None:
        details = dict(row.details)
        details["count"] = int(details.get("count", 1)) + 1
        details["last_seen"] = stamp
        details.update(finding.evidence)
        if blocked_until is not None and (details.get("blocked_until") or "") < blocked_until:
            details["blocked_until"] = blocked_until
            row.auto_blocked = True
            security_generation.bump(session)
        row.details = details
        if _rank(finding.severity) > _rank(row.severity):
            row.severity = finding.severity
        if confidence is not None and (row.ml_confidence is None or confidence > row.ml_confidence):
            row.ml_confidence = confidence
        return row, False
    details = {
        "subject": finding.subject,
        "detector": finding.detector,
        "count": 1,
        "first_seen": stamp,
        "last_seen": stamp,
        **finding.evidence,
    }
    if blocked_until is not None:
        details["blocked_until"] = blocked_until
    row = SecurityAnomaly(
        id=uuid.uuid4(),
        organization_id=org,
        user_id=finding.user_id,
        anomaly_type=finding.anomaly_type,
        severity=finding.severity,
        details=details,
        ml_confidence=confidence,
        auto_blocked=blocked_until is not None,
        created_at=now,
    )
    session.add(row)
    session.flush()
    if blocked_until is not None:
        security_generation.bump(session)  # every worker reloads its blocks
    audit.append(
        session,
        organization_id=org,
        action="security.anomaly_detected",
        resource_type="security_anomaly",
        resource_id=row.id,
        user_id=finding.user_id,
        data={
            "anomaly_type": finding.anomaly_type,
            "severity": finding.severity,
            "detector": finding.detector,
            "auto_blocked": blocked_until is not None,
        },
    )
    return row, True


def blocked_until(row: SecurityAnomaly, now: datetime | None = None) -> datetime | None:
    """When the row's block ends, if it blocks anything now (open, auto-blocked, not expired)."""
    if not row.auto_blocked or row.reviewed_at is not None:
        return None
    raw = (row.details or {}).get("blocked_until")
    if not raw:
        return None
    until = as_utc(datetime.fromisoformat(raw))
    return until if until > (now or utcnow()) else None


def target_of(details: Any, user_id: uuid.UUID | None) -> tuple[str, str]:
    """What an anomaly row is about, as ``(kind, value)``: ``address``, ``user``, ``principal`` (a
    token subject) or ``org`` (the whole organization).

    The detectors name it in ``details.subject`` (``address:<ip>``, ``user:<id>``,
    ``principal:<sub>``, ``org:<id>``); rows written by other tools may name an address in
    ``details.address``/``ip``/``client_ip`` or a user in ``user_id``; a row naming nothing is
    about its organization. A block applies to exactly this target, so one hostile user or address
    never shuts out the rest of its organization.
    """
    subject = details.get("subject") if isinstance(details, dict) else None
    if isinstance(subject, str) and ":" in subject:
        kind, _, value = subject.partition(":")
        if kind in ("address", "user", "principal", "org") and value:
            return kind, value
    if isinstance(details, dict):
        for key in ("address", "ip", "client_ip"):
            named = details.get(key)
            if isinstance(named, str) and named:
                return "address", named
    if user_id is not None:
        return "user", str(user_id)
    return "org", ""


def block_expired(details: Any, now: datetime | None = None) -> bool:
    """An auto-block whose ``blocked_until`` has passed (a block without one lasts until resolved)."""
    raw = details.get("blocked_until") if isinstance(details, dict) else None
    if not raw:
        return False
    try:
        return as_utc(datetime.fromisoformat(str(raw))) <= (now or utcnow())
    except ValueError:
        return False


def blocking(
    session: Session,
    organization_ids: set[uuid.UUID],
    anomaly_types: tuple[str, ...],
    now: datetime | None = None,
    lookback_s: int = 7 * 86_400,
) -> dict[uuid.UUID, SecurityAnomaly]:
    """Per organization, an open auto-blocked row of these types that still blocks (one query)."""
    if not organization_ids:
        return {}
    moment = now or utcnow()
    rows = session.scalars(
        select(SecurityAnomaly).where(
            SecurityAnomaly.organization_id.in_(organization_ids),
            SecurityAnomaly.anomaly_type.in_(anomaly_types),
            SecurityAnomaly.auto_blocked.is_(True),
            SecurityAnomaly.reviewed_at.is_(None),
            SecurityAnomaly.created_at >= moment - timedelta(seconds=lookback_s),
        )
    )
    found: dict[uuid.UUID, SecurityAnomaly] = {}
    for row in rows:
        if (
            blocked_until(row, moment) is not None
            and row.details.get("subject") == f"org:{row.organization_id}"
        ):
            found.setdefault(row.organization_id, row)
    return found


def live_blocks(
    session: Session, prefixes: tuple[str, ...], now: datetime | None = None, lookback_s: int = 7 * 86_400
) -> dict[str, datetime]:
    """Subject -> end of its block, for the open auto-blocked rows whose subject starts with one of
    ``prefixes`` and whose block has not ended (rows of the last ``lookback_s`` seconds)."""
    moment = now or utcnow()
    rows = session.scalars(
        select(SecurityAnomaly).where(
            SecurityAnomaly.auto_blocked.is_(True),
            SecurityAnomaly.reviewed_at.is_(None),
            SecurityAnomaly.created_at >= moment - timedelta(seconds=lookback_s),
        )
    )
    found: dict[str, datetime] = {}
    for row in rows:
        subject = str((row.details or {}).get("subject", ""))
        until = blocked_until(row, moment)
        if until is not None and subject.startswith(prefixes):
            found[subject] = max(until, found.get(subject, until))
    return found


def as_dict(row: SecurityAnomaly) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "organization_id": str(row.organization_id),
        "user_id": str(row.user_id) if row.user_id else None,
        "anomaly_type": row.anomaly_type,
        "severity": row.severity,
        "subject": (row.details or {}).get("subject"),
        "count": (row.details or {}).get("count", 1),
        "details": row.details,
        "ml_confidence": float(row.ml_confidence) if row.ml_confidence is not None else None,
        "auto_blocked": bool(row.auto_blocked),
        "reviewed_by": str(row.reviewed_by) if row.reviewed_by else None,
        "reviewed_at": iso(row.reviewed_at),
        "resolution": row.resolution,
        "status": "resolved" if row.reviewed_at is not None else "open",
        "created_at": iso(row.created_at),
    }


def list_rows(
    session: Session,
    organization_id: uuid.UUID | None,
    status: str = "open",
    limit: int = 100,
) -> list[SecurityAnomaly]:
    """Newest first; one organization's (an org admin's view) or every one (``None``: platform)."""
    if status not in STATUSES:
        raise InvalidInputError(f"status must be one of {', '.join(STATUSES)}")
    query = select(SecurityAnomaly).order_by(SecurityAnomaly.created_at.desc()).limit(limit)
    if organization_id is not None:
        query = query.where(SecurityAnomaly.organization_id == organization_id)
    if status == "open":
        query = query.where(SecurityAnomaly.reviewed_at.is_(None))
    elif status == "resolved":
        query = query.where(SecurityAnomaly.reviewed_at.is_not(None))
    return list(session.scalars(query))


def get(session: Session, anomaly_id: str | uuid.UUID, organization_id: uuid.UUID | None) -> SecurityAnomaly:
    """The row, if it exists and (for an org admin) is the organization's; else ``NotFoundError``."""
    try:
        key = anomaly_id if isinstance(anomaly_id, uuid.UUID) else uuid.UUID(str(anomaly_id))
    except ValueError:
        raise InvalidInputError(f"anomaly id '{anomaly_id}' is not a UUID") from None
    row = session.get(SecurityAnomaly, key)
    if row is None or (organization_id is not None and row.organization_id != organization_id):
        raise NotFoundError(f"no security anomaly {key}; list them with `accute-fl security anomalies`")
    return row


def resolve(
    session: Session,
    anomaly_id: str | uuid.UUID,
    organization_id: uuid.UUID | None,
    *,
    resolution: str,
    reviewer: str,
    reviewer_user_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> SecurityAnomaly:
    """Close the row (``reviewed_at``, ``reviewed_by``, ``resolution``); its block ends with it. Audited."""
    text = resolution.strip()
    if not text or len(text) > RESOLUTION_MAX:
        raise InvalidInputError(f"resolution must be 1 to {RESOLUTION_MAX} characters, e.g. false_positive")
    if not reviewer.strip():
        raise InvalidInputError("say who reviewed it (--by NAME)")
    row = get(session, anomaly_id, organization_id)
    if row.reviewed_at is not None:
        raise ConflictError(f"security anomaly {row.id} was already resolved ({row.resolution})")
    row.reviewed_at = now or utcnow()
    row.reviewed_by = reviewer_user_id
    row.resolution = text
    row.details = {**row.details, "reviewer": reviewer.strip()[:200]}
    if row.auto_blocked:
        security_generation.bump(session)  # every worker drops the block
    audit.append(
        session,
        organization_id=row.organization_id,
        action="security.anomaly_resolved",
        resource_type="security_anomaly",
        resource_id=row.id,
        user_id=reviewer_user_id,
        data={"resolution": text, "reviewer": reviewer.strip()[:200], "was_blocking": bool(row.auto_blocked)},
    )
    return row
