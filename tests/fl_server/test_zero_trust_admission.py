"""Zero trust for federated rounds: an organization auto-blocked (or with critical anomalies) by
anomaly detection is kept out of the round, recorded with the policy's reason; others train."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import select

from fl_server.governance import REJECTED_POLICY, Governor, Tenant
from schema.db import transaction
from schema.models import FlRoundOutcome, SecurityAnomaly
from tests.fl_server.conftest import Federation

MakeFederation = Callable[..., Federation]


def _anomaly(
    org: uuid.UUID, severity: str, auto_blocked: bool = False, resolution: str | None = None
) -> SecurityAnomaly:
    return SecurityAnomaly(
        organization_id=org,
        anomaly_type="volume_spike",
        severity=severity,
        details={"why": "test"},
        auto_blocked=auto_blocked,
        resolution=resolution,
    )


def test_blocked_or_anomalous_organizations_sit_the_round_out(make_federation: MakeFederation) -> None:
    # Prepare: tenant 0 auto-blocked, tenant 1 two critical anomalies (trust 20: deny), tenant 2 a
    # low one (allowed), tenant 3 a block that was resolved (allowed).
    fed = make_federation(tenants=4)
    orgs = [uuid.UUID(t.organization_id) for t in fed.tenants]
    with transaction(fed.engine) as session:
        session.add(_anomaly(orgs[0], "high", auto_blocked=True))
        session.add_all([_anomaly(orgs[1], "critical"), _anomaly(orgs[1], "critical")])
        session.add(_anomaly(orgs[2], "low"))
        session.add(_anomaly(orgs[3], "critical", auto_blocked=True, resolution="false_positive"))
    tenants = [Tenant(fed.node_of(i), orgs[i], t.name) for i, t in enumerate(fed.tenants)]
    governor = Governor(fed.engine, fed.config(rounds=1), fed.settings)
    governor.start_run()

    # Execute
    admission = governor.admit(1, tenants)

    # Assert
    assert set(admission.admitted) == {tenants[2].node_id, tenants[3].node_id}
    assert admission.skipped == {"tenant-0": REJECTED_POLICY, "tenant-1": REJECTED_POLICY}
    with transaction(fed.engine) as session:
        reasons = {r.tenant: r.reason or "" for r in session.scalars(select(FlRoundOutcome))}
    assert "auto_blocked" in reasons["tenant-0"] and "recent_anomalies" in reasons["tenant-1"]


def test_zero_trust_off_admits_everyone(make_federation: MakeFederation) -> None:
    # Prepare
    fed = make_federation(tenants=2)
    org = uuid.UUID(fed.tenants[0].organization_id)
    with transaction(fed.engine) as session:
        session.add(_anomaly(org, "high", auto_blocked=True))
    tenants = [
        Tenant(fed.node_of(i), uuid.UUID(t.organization_id), t.name) for i, t in enumerate(fed.tenants)
    ]
    governor = Governor(
        fed.engine, fed.config(rounds=1), fed.settings.model_copy(update={"zero_trust_enabled": False})
    )
    governor.start_run()

    # Execute / Assert
    assert len(governor.admit(1, tenants).admitted) == 2
