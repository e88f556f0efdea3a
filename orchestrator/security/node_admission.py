"""Zero trust for federated rounds: may a tenant's node take part in this round?

The federation server (``fl_server.governance.Governor``) asks once per admission batch, for the
organizations it is about to gate, in one query: the organizations' own unresolved anomalies (rows
naming neither a user nor a client address; recent ones by severity, auto-blocks of any age, as
the HTTP gate reads them for the organization) become ``Factors`` and the zero-trust policy
decides. Anything but ``allow`` keeps the tenant out of the round (a node
cannot answer a challenge), with the policy's reasons. A node's network address is not known to
the server's strategy (Flower does not hand it over), so the identity checked is the organization
the node speaks for.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from orchestrator.security.zero_trust import ALLOW, Factors, Policy, decide, load_policy
from schema.config import Settings
from schema.models import SecurityAnomaly
from schema.security_anomalies import block_expired, target_of
from schema.timeutil import utcnow


def node_policy(settings: Settings) -> Policy | None:
    """The policy nodes are admitted under; None when zero trust is off."""
    return load_policy(settings.zero_trust_policy_path) if settings.zero_trust_enabled else None


def refusals(
    session: Session, organizations: Iterable[uuid.UUID], policy: Policy, now: datetime | None = None
) -> dict[uuid.UUID, str]:
    """Organizations whose node the policy keeps out, with the reason; one query for all of them."""
    wanted = set(organizations)
    if not wanted:
        return {}
    moment = now or utcnow()
    since = moment - timedelta(seconds=policy.anomaly_window_s)
    rows = session.execute(
        select(
            SecurityAnomaly.organization_id,
            SecurityAnomaly.severity,
            SecurityAnomaly.auto_blocked,
            SecurityAnomaly.details,
        ).where(
            SecurityAnomaly.organization_id.in_(wanted),
            SecurityAnomaly.user_id.is_(None),
            SecurityAnomaly.resolution.is_(None),
            or_(SecurityAnomaly.auto_blocked.is_(True), SecurityAnomaly.created_at >= since),
        )
    ).all()
    severities: dict[uuid.UUID, list[str]] = {}
    blocked: set[uuid.UUID] = set()
    for org, severity, auto_blocked, details in rows:
        if target_of(details, None)[0] != "org":  # about one address or token, not the organization
            continue
        severities.setdefault(org, []).append(severity)
        if auto_blocked and not block_expired(details, moment):
            blocked.add(org)
    refused: dict[uuid.UUID, str] = {}
    for org in set(severities) | blocked:
        factors = Factors(
            auto_blocked=org in blocked, anomalies=tuple(severities.get(org, ())), hour_utc=moment.hour
        )
        decision = decide(factors, policy)
        if decision.outcome != ALLOW:
            refused[org] = (
                f"zero-trust policy: {decision.outcome} (trust {decision.trust_score:.0f}; "
                f"{', '.join(decision.reasons)})"
            )
    return refused
