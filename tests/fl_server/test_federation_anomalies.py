"""Federation anomalies through the governed strategy on the grid double (both backends).

A poisoning node (update x 50) is flagged as an outlier in round 1: that raises a
``behavioral_mismatch`` security anomaly, auto-blocked by the default policy, and the node sits out
round 2 with the anomaly named. A policy that does not block records the anomaly and lets it in.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import select

from fl_server.anomalies import FederationWatch, burn_ratio
from schema import security_anomalies
from schema.anomaly_policy import load_policy
from schema.config import Settings
from schema.db import transaction
from schema.models import FlRoundOutcome, SecurityAnomaly
from tests.fl_server.conftest import Federation
from tests.fl_server.test_poisoning import ATTACKER, _boost


def _outcomes(fed: Federation, org: uuid.UUID) -> list[tuple[int, str, str | None]]:
    with transaction(fed.engine) as session:
        rows = session.execute(
            select(FlRoundOutcome.aggregation_round, FlRoundOutcome.status, FlRoundOutcome.reason)
            .where(FlRoundOutcome.organization_id == org)
            .order_by(FlRoundOutcome.aggregation_round)
        ).all()
    return [(r, s, why) for r, s, why in rows]


def _anomalies(fed: Federation, org: uuid.UUID) -> list[SecurityAnomaly]:
    with transaction(fed.engine) as session:
        rows = list(session.scalars(select(SecurityAnomaly).where(SecurityAnomaly.organization_id == org)))
        for row in rows:
            session.expunge(row)
    return rows


def test_an_outlier_update_raises_an_anomaly_and_the_node_sits_out_the_next_round(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: tenant-2 boosts its update in every round; the default policy blocks outliers.
    fed = make_federation()
    fed.grid.tamper[fed.node_of(ATTACKER)] = _boost
    org = uuid.UUID(fed.tenants[ATTACKER].organization_id)

    # Execute: two rounds.
    fed.run(fed.config(rounds=2, dp="off", lr=0.1))

    # Assert: round 1 rejected as an outlier, one auto-blocked anomaly, round 2 refused naming it.
    outcomes = _outcomes(fed, org)
    assert [(r, s) for r, s, _ in outcomes] == [(1, "rejected_invalid"), (2, "rejected_invalid")]
    assert (outcomes[0][2] or "").startswith("norm_exceeded")
    anomalies = _anomalies(fed, org)
    assert len(anomalies) == 1
    anomaly = anomalies[0]
    assert anomaly.anomaly_type == "behavioral_mismatch" and anomaly.severity == "high"
    assert anomaly.auto_blocked and anomaly.details["subject"] == f"org:{org}"
    assert anomaly.details["detector"] == "fl_update_outlier" and anomaly.details["round"] == 1
    assert (outcomes[1][2] or "").startswith(f"security: behavioral_mismatch anomaly {anomaly.id}")
    # The honest tenants were not touched.
    for index in range(3):
        if index != ATTACKER:
            other = uuid.UUID(fed.tenants[index].organization_id)
            assert _anomalies(fed, other) == []
            assert {s for _, s, _ in _outcomes(fed, other)} == {"accepted"}


def test_resolving_the_anomaly_lets_the_node_back_in(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: an attacker blocked by round 1 of a first run; an admin resolves the anomaly.
    fed = make_federation()
    fed.grid.tamper[fed.node_of(ATTACKER)] = _boost
    org = uuid.UUID(fed.tenants[ATTACKER].organization_id)
    fed.run(fed.config(rounds=1, dp="off", lr=0.1, run_name="first"))
    (anomaly,) = _anomalies(fed, org)
    with transaction(fed.engine) as session:
        security_anomalies.resolve(session, anomaly.id, None, resolution="false_positive", reviewer="ops")
    del fed.grid.tamper[fed.node_of(ATTACKER)]

    # Execute: a second run, the node now honest.
    fed.run(fed.config(rounds=1, dp="off", lr=0.1, run_name="second"))

    # Assert: it took part again.
    assert _outcomes(fed, org)[-1][1] == "accepted"


def test_a_policy_without_blocking_records_the_outlier_and_admits_the_node(
    make_federation, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a policy file turning the outlier block off.
    policy = tmp_path / "policy.toml"
    policy.write_text("[fl_update_outlier]\nauto_block = false\n")
    fed = make_federation()
    fed.settings = Settings(anomaly_policy_file=policy)
    fed.grid.tamper[fed.node_of(ATTACKER)] = _boost
    org = uuid.UUID(fed.tenants[ATTACKER].organization_id)

    # Execute
    fed.run(fed.config(rounds=2, dp="off", lr=0.1))

    # Assert: the node was judged (and rejected) in both rounds, never skipped; one row, count 2.
    outcomes = _outcomes(fed, org)
    assert all((why or "").startswith("norm_exceeded") for _, _, why in outcomes)
    (anomaly,) = _anomalies(fed, org)
    assert not anomaly.auto_blocked and anomaly.details["count"] == 2


def test_repeated_rejections_and_budget_burn_rules(engine) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the watch alone, on a real database, with an organization.
    from schema import directory

    with transaction(engine) as session:
        org = directory.create_organization(session, "watched").id
    watch = FederationWatch(load_policy())

    # Execute: rejected (not outliers) in rounds 1, 2, 3; increments 0.1, 0.1, 0.1, then 0.5.
    with transaction(engine) as session:
        for server_round in (1, 2, 3):
            watch.judged(session, org, "r", server_round, rejected_invalid=True, outlier=False, reason="x")
        for server_round, increment in ((1, 0.1), (2, 0.1), (3, 0.1), (4, 0.5)):
            watch.charged(session, org, "r", server_round, increment)

    # Assert: one access_pattern row (blocked) and one volume_spike row (not blocked).
    with transaction(engine) as session:
        rows = {r.anomaly_type: r for r in session.scalars(select(SecurityAnomaly))}
        assert set(rows) == {"access_pattern", "volume_spike"}
        assert rows["access_pattern"].auto_blocked and rows["access_pattern"].details["rejected_rounds"] == [
            1,
            2,
            3,
        ]
        assert not rows["volume_spike"].auto_blocked and rows["volume_spike"].details["ratio"] == 5.0
        assert org in watch.blocked(session, {org})
    assert burn_ratio([], 1.0) is None and burn_ratio([0.0], 1.0) is None


def test_an_aggregator_outlier_is_recorded_and_not_blocked_by_default(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a loose norm bound, so the median aggregator (not the validator) flags the attacker.
    fed = make_federation()
    fed.grid.tamper[fed.node_of(ATTACKER)] = _boost
    org = uuid.UUID(fed.tenants[ATTACKER].organization_id)

    # Execute: two rounds.
    fed.run(fed.config(rounds=2, dp="off", lr=0.1, aggregator="fedmedian", max_update_norm=1e9))

    # Assert: accepted and flagged both rounds; one medium row (count 2), never blocking.
    assert [s for _, s, _ in _outcomes(fed, org)] == ["accepted", "accepted"]
    (anomaly,) = _anomalies(fed, org)
    assert anomaly.details["detector"] == "fl_aggregator_outlier" and anomaly.severity == "medium"
    assert not anomaly.auto_blocked and anomaly.details["count"] == 2


def _outlier_rows(engine) -> dict[uuid.UUID, SecurityAnomaly]:  # type: ignore[no-untyped-def]
    with transaction(engine) as session:
        rows = {r.organization_id: r for r in session.scalars(select(SecurityAnomaly))}
        for row in rows.values():
            session.expunge(row)
    return rows


def test_an_outlier_blocks_only_far_beyond_its_bound_or_when_repeated_within_the_window(engine) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the watch alone with the default policy, four organizations.
    from schema import directory

    with transaction(engine) as session:
        once, repeated, spread, far = (directory.create_organization(session, n).id for n in "abcd")
    watch = FederationWatch(load_policy())

    def outlier(session, org, server_round: int, excess: float) -> None:  # type: ignore[no-untyped-def]
        watch.judged(
            session,
            org,
            "r",
            server_round,
            rejected_invalid=True,
            outlier=True,
            reason="norm_exceeded",
            excess=excess,
        )

    # Execute: one outlier 1.5x its bound; two within 5 rounds; two 6 rounds apart; one 10x.
    with transaction(engine) as session:
        outlier(session, once, 1, 1.5)
        outlier(session, repeated, 1, 1.2)
        outlier(session, repeated, 3, 1.1)
        outlier(session, spread, 1, 1.2)
        outlier(session, spread, 7, 1.2)
        outlier(session, far, 1, 10.0)

    # Assert: each recorded; blocked only the repeat within the window and the far one.
    rows = _outlier_rows(engine)
    assert {org: row.auto_blocked for org, row in rows.items()} == {
        once: False,
        repeated: True,
        spread: False,
        far: True,
    }
    assert rows[once].details["excess"] == 1.5 and rows[once].details["detector"] == "fl_update_outlier"
    assert rows[repeated].details["outlier_rounds"] == [1, 3] and rows[repeated].details["count"] == 2
    with transaction(engine) as session:
        assert set(watch.blocked(session, {once, repeated, spread, far})) == {repeated, far}


def test_a_policy_with_threshold_one_blocks_on_every_outlier(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the former rule, as data.
    from schema import directory

    policy = tmp_path / "policy.toml"
    policy.write_text("[fl_update_outlier]\nthreshold = 1\n")
    with transaction(engine) as session:
        org = directory.create_organization(session, "strict").id
    watch = FederationWatch(load_policy(policy))

    # Execute: one outlier just above its bound.
    with transaction(engine) as session:
        watch.judged(session, org, "r", 1, rejected_invalid=True, outlier=True, reason="x", excess=1.01)

    # Assert
    assert _outlier_rows(engine)[org].auto_blocked
