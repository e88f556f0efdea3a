"""Poisoning through the defaults, on the grid double: the attacker changes nothing and is flagged.

Non-private runs (the server seeds every node: replies are reproducible), three tenants, tenant-2
attacks. The honest replies are recorded as they leave the nodes, and the expected global model is
computed here, independently, from them.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import numpy as np
import pytest
from flwr.app import Message
from sqlalchemy import select

from aggregation.flwr_adapter import record_from_arrays
from fl_client import protocol
from fl_client.protocol import TrainReport
from schema.db import transaction
from schema.models import FederatedLearningContribution, FlRoundOutcome
from tests.fl_server.conftest import Federation

ATTACKER = 2


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return {name: np.array(a.numpy(), copy=True) for name, a in reply.content[protocol.ARRAYS].items()}


def _record_honest(fed: Federation) -> dict[int, tuple[dict[str, np.ndarray], int]]:
    """Install recorders on the honest nodes: node -> (arrays, num_examples) of its last reply."""
    seen: dict[int, tuple[dict[str, np.ndarray], int]] = {}
    for index in range(3):
        if index == ATTACKER:
            continue

        def record(msg: Message, reply: Message, node: int = index) -> Message:
            report = TrainReport.from_record(protocol.config_of(reply.content, protocol.REPORT))
            seen[node] = (_arrays(reply), report.num_examples)
            return reply

        fed.grid.tamper[fed.node_of(index)] = record
    return seen


def _boost(msg: Message, reply: Message) -> Message:
    """Δ x 50: the node's update minus the global weights it was sent, scaled."""
    sent = {name: a.numpy() for name, a in msg.content[protocol.ARRAYS].items()}
    trained = _arrays(reply)
    boosted = {n: (sent[n] + 50.0 * (trained[n] - sent[n])).astype(trained[n].dtype) for n in trained}
    reply.content[protocol.ARRAYS] = record_from_arrays(boosted)
    # Report the checksum of what is sent (an attacker controls its own report).
    from aggregation.checksum import update_checksum

    reply.content[protocol.REPORT]["update_checksum"] = update_checksum(boosted, names=list(boosted))
    return reply


def _claim_billions(msg: Message, reply: Message) -> Message:
    reply.content[protocol.REPORT]["num_examples"] = 10**9
    return reply


def _fedavg(replies: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in replies)
    names = replies[0][0]
    return {name: sum(a[name].astype(np.float64) * (n / total) for a, n in replies) for name in names}  # type: ignore[misc]


def _attacker_outcome(fed: Federation) -> tuple[FlRoundOutcome, list[Decimal]]:
    org = uuid.UUID(fed.tenants[ATTACKER].organization_id)
    with transaction(fed.engine) as session:
        outcome = session.scalar(select(FlRoundOutcome).where(FlRoundOutcome.organization_id == org))
        assert outcome is not None
        weights = list(
            session.scalars(
                select(FederatedLearningContribution.contribution_weight).where(
                    FederatedLearningContribution.status == "accepted"
                )
            )
        )
        session.expunge(outcome)
        return outcome, weights


@pytest.mark.parametrize("attack", ["boosted", "num_examples"])
def test_attacker_is_rejected_flagged_and_fedavg_is_over_the_honest_tenants(
    make_federation, attack: str
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: no max_update_norm configured (the default), weights by example counts.
    fed = make_federation()
    honest = _record_honest(fed)
    fed.grid.tamper[fed.node_of(ATTACKER)] = _boost if attack == "boosted" else _claim_billions
    config = fed.config(rounds=1, dp="off", lr=0.1)

    # Execute
    result = fed.run(config)

    # Assert: the global model is FedAvg over the honest replies, computed here.
    expected = _fedavg(list(honest.values()))
    for name, value in expected.items():
        np.testing.assert_allclose(result.arrays[name], value, rtol=1e-5, atol=1e-6)
    outcome, weights = _attacker_outcome(fed)
    assert outcome.status == "rejected_invalid" and outcome.outlier
    assert (outcome.reason or "").startswith("norm_exceeded" if attack == "boosted" else "invalid_weight")
    assert sum(float(w) for w in weights) == pytest.approx(1.0, abs=1e-5)


def test_krum_keeps_an_honest_update_flags_the_attacker_and_records_the_weights_it_used(
    make_federation,
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a configured, loose norm bound (the default one would reject the attacker first).
    fed = make_federation()
    honest = _record_honest(fed)
    fed.grid.tamper[fed.node_of(ATTACKER)] = _boost
    config = fed.config(rounds=1, dp="off", lr=0.1, aggregator="krum", max_update_norm=1e9)

    # Execute
    result = fed.run(config)

    # Assert: Krum's result is one honest reply; the attacker is accepted, flagged, weight 0.
    matches = [
        index
        for index, (arrays, _) in honest.items()
        if all(np.allclose(result.arrays[n], arrays[n], rtol=1e-6, atol=1e-7) for n in arrays)
    ]
    assert len(matches) == 1
    outcome, weights = _attacker_outcome(fed)
    assert outcome.status == "accepted" and outcome.outlier
    assert sorted(float(w) for w in weights) == [0.0, 0.0, 1.0]
    with transaction(fed.engine) as session:
        attacker_weight = session.scalar(
            select(FederatedLearningContribution.contribution_weight).where(
                FederatedLearningContribution.id == outcome.contribution_id
            )
        )
    assert attacker_weight == 0


def test_median_flags_the_attacker_and_weights_every_update_equally(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    fed.grid.tamper[fed.node_of(ATTACKER)] = _boost
    fed.run(fed.config(rounds=1, dp="off", lr=0.1, aggregator="fedmedian", max_update_norm=1e9))
    outcome, weights = _attacker_outcome(fed)
    assert outcome.status == "accepted" and outcome.outlier
    assert [float(w) for w in weights] == pytest.approx([1 / 3] * 3, abs=1e-5)
