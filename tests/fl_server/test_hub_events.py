"""A governed run tells the hub: one event per decided contribution and per committed round, written
with the rows that decide them, and none for a commit that rolled back."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aggregation import SeenChecksums
from consent_gate.records import withdraw
from fl_server.governance import Governor
from schema.db import transaction
from schema.models import FederatedLearningContribution, FlRoundSummary, FlRun, HubOutbox, User
from tests.fl_server.conftest import Federation

MakeFederation = Callable[..., Federation]


def _events(fed: Federation, prefix: str = "accute.fl.") -> list[HubOutbox]:
    with transaction(fed.engine) as session:
        rows = list(
            session.scalars(
                select(HubOutbox).where(HubOutbox.event_type.startswith(prefix)).order_by(HubOutbox.sequence)
            )
        )
        session.expunge_all()
    return rows


def test_a_run_emits_each_decided_contribution_and_each_committed_round(
    make_federation: MakeFederation,
) -> None:
    # Prepare: tenant-2 withdrew every consent, so it is rejected at admission each round.
    fed = make_federation()
    with transaction(fed.engine) as session:
        org = uuid.UUID(fed.tenants[2].organization_id)
        for user in session.scalars(select(User).where(User.organization_id == org)):
            withdraw(session, org, user.id, "federated_learning")

    # Execute
    result = fed.run(fed.config(rounds=2))

    # Assert: the events mirror the committed rows, one for one.
    assert result.last_round == 2
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None
        contributions = {
            c.id: c
            for c in session.scalars(select(FederatedLearningContribution))
            if c.status is not None and (c.status == "accepted" or c.status.startswith("rejected"))
        }
        summaries = list(session.scalars(select(FlRoundSummary).order_by(FlRoundSummary.aggregation_round)))
    events = _events(fed)
    decided = [e for e in events if e.event_type.startswith("accute.fl.contribution.")]
    assert sorted(uuid.UUID(e.payload["contribution_id"]) for e in decided) == sorted(contributions)
    for event in decided:
        contribution = contributions[uuid.UUID(event.payload["contribution_id"])]
        assert event.organization_id == contribution.organization_id
        assert event.payload["status"] == contribution.status
        assert event.event_type == (
            "accute.fl.contribution.accepted"
            if contribution.status == "accepted"
            else "accute.fl.contribution.rejected"
        )
        assert event.payload["run_id"] == str(run.id) and event.correlation_id == str(run.id)
    rejected = [e for e in decided if e.event_type.endswith("rejected")]
    assert {e.organization_id for e in rejected} == {org}
    assert {e.payload["status"] for e in rejected} == {"rejected_consent"}
    rounds = [e for e in events if e.event_type == "accute.fl.round.completed"]
    assert [e.payload["round"] for e in rounds] == [s.aggregation_round for s in summaries] == [1, 2]
    assert [e.payload["weights_checksum"] for e in rounds] == [s.weights_checksum for s in summaries]
    assert [e.payload["accepted"] for e in rounds] == [s.accepted for s in summaries] == [2, 2]
    assert all(e.organization_id is None and e.payload["model_type"] == "digits" for e in rounds)
    # No tenant name, node id or free-text reason leaves in an event.
    text = str([e.payload for e in events])
    assert "tenant-" not in text and "consent" not in text.replace("rejected_consent", "")


def test_a_round_commit_that_rolls_back_emits_nothing(make_federation: MakeFederation) -> None:
    # Prepare: round 1's summary already exists, so the commit's insert fails and rolls back.
    fed = make_federation()
    governor = Governor(fed.engine, fed.config(rounds=2), fed.settings)
    state = governor.start_run()
    with transaction(fed.engine) as session:
        session.add(
            FlRoundSummary(
                run_id=state.run_id,
                aggregation_round=1,
                metric_name="accuracy",
                accepted=0,
                weights_checksum="f" * 64,
            )
        )

    # Execute
    with pytest.raises(IntegrityError):
        governor.commit_round(1, weights_checksum="a" * 64, weights={}, seen=SeenChecksums([]), metric=None)

    # Assert: the run did not move and no event says it did.
    assert _events(fed) == []
    with transaction(fed.engine) as session:
        run = session.get(FlRun, state.run_id)
        assert run is not None and run.last_completed_round == 0

    # And the same commit, once it can land, emits its event.
    with transaction(fed.engine) as session:
        session.query(FlRoundSummary).delete()
    governor.commit_round(1, weights_checksum="a" * 64, weights={}, seen=SeenChecksums([]), metric=0.5)
    (event,) = _events(fed)
    assert event.event_type == "accute.fl.round.completed"
    assert event.payload["metric_value"] == 0.5 and event.payload["accepted"] == 0


def test_a_central_dp_run_tells_the_hub_no_tenant_participation(make_federation: MakeFederation) -> None:
    # Prepare: central DP, the tenant is the unit, so participation is what the DP protects.
    fed = make_federation()
    config = fed.config(rounds=2, dp="central", fraction=0.5, central_noise_multiplier=5.0, steps=2)

    # Execute
    result = fed.run(config)

    # Assert: contributions were decided and rounds committed, yet the hub hears of no tenant's
    # decision and no contributor count; the curator's own rows keep both.
    assert result.last_round == 2
    with transaction(fed.engine) as session:
        decided = [
            c
            for c in session.scalars(select(FederatedLearningContribution))
            if c.status is not None and (c.status == "accepted" or c.status.startswith("rejected"))
        ]
        summaries = list(session.scalars(select(FlRoundSummary).order_by(FlRoundSummary.aggregation_round)))
    assert decided and [s.aggregation_round for s in summaries] == [1, 2]
    events = _events(fed)
    assert [e for e in events if e.event_type.startswith("accute.fl.contribution.")] == []
    rounds = [e for e in events if e.event_type == "accute.fl.round.completed"]
    assert [e.payload["round"] for e in rounds] == [1, 2]
    assert all(e.payload["accepted"] is None and e.schema_version == 2 for e in rounds)
    assert all(e.organization_id is None for e in events)
