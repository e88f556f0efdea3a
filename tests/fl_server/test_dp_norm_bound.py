"""A tiny honest tenant under local DP-SGD among larger ones: accepted, never flagged or blocked.

Its update is mostly Gaussian noise divided by its small public batch size, so its norm is many
times the median (the larger tenants' updates are averaged over larger batches). The default bound
used to be 5 x the median alone: it rejected the tiny tenant as an outlier and the anomaly
detector blocked it for a day. The DP-aware bound (``fl_server.norm_bound``) admits what an honest
node's clipping and noise can produce; a boosted update is still rejected (test_poisoning,
test_federation_anomalies).
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from consent_gate.records import withdraw
from schema.db import transaction
from schema.models import FlRoundOutcome, SecurityAnomaly, User
from tests.fl_server.test_poisoning import ATTACKER, _boost

#: With seed 5 the synthetic firms have 77, 8, 11, 2, 7, 17, 111 and 29 users; firm 3 is the smallest.
TINY = 3


def test_a_tiny_honest_dp_tenant_is_accepted_and_not_blocked(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: eight tenants; the tiny one keeps one consenting user (a public batch size of 2
    # records per step against 14-222 for the others), local DP at the fixture's parameters.
    fed = make_federation(tenants=8)
    org = uuid.UUID(fed.tenants[TINY].organization_id)
    with transaction(fed.engine) as session:
        users = sorted(session.scalars(select(User.id).where(User.organization_id == org)))
        for user_id in users[1:]:
            withdraw(session, org, user_id, "federated_learning")

    # Execute: two rounds (the second judges against the first round's norms too).
    fed.run(fed.config(rounds=2))

    # Assert: every tenant, the tiny one included, accepted in both rounds; no anomaly recorded.
    with transaction(fed.engine) as session:
        outcomes = session.execute(
            select(
                FlRoundOutcome.tenant,
                FlRoundOutcome.aggregation_round,
                FlRoundOutcome.status,
                FlRoundOutcome.reason,
            )
        ).all()
        anomalies = list(session.scalars(select(SecurityAnomaly)))
    tiny = fed.tenants[TINY].name
    assert sorted((r, s) for t, r, s, _ in outcomes if t == tiny) == [(1, "accepted"), (2, "accepted")], (
        outcomes
    )
    assert {s for _, _, s, _ in outcomes} == {"accepted"}, outcomes
    assert anomalies == []


def test_a_boosted_dp_update_is_still_rejected_flagged_and_blocked(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: local DP, three tenants, tenant-2 sends 50 x its update (test_poisoning's attack).
    fed = make_federation()
    fed.grid.tamper[fed.node_of(ATTACKER)] = _boost
    org = uuid.UUID(fed.tenants[ATTACKER].organization_id)

    # Execute: one round.
    fed.run(fed.config(rounds=1))

    # Assert: rejected over the norm bound, flagged, and blocked at once (far beyond its bound).
    with transaction(fed.engine) as session:
        outcome = session.scalar(select(FlRoundOutcome).where(FlRoundOutcome.organization_id == org))
        (anomaly,) = session.scalars(select(SecurityAnomaly).where(SecurityAnomaly.organization_id == org))
        assert outcome is not None and outcome.status == "rejected_invalid" and outcome.outlier
        assert (outcome.reason or "").startswith("norm_exceeded")
        assert anomaly.auto_blocked and anomaly.details["excess"] >= 4.0
