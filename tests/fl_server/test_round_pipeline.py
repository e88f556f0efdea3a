"""Round r+1 is sampled and its new nodes identified while round r's evaluation replies are
awaited; it is admitted, charged and sent only after they came back, to nodes still connected."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from flwr.app import Message
from sqlalchemy.exc import OperationalError

from fl_client import protocol
from fl_server import governance
from fl_server.governance import REJECTED_CONSENT, Governor
from tests.fl_server.conftest import Federation
from tests.fl_server.test_admission import trained, withdraw_all
from tests.fl_server.test_charge_before_release import events_of, statuses

MakeFederation = Callable[..., Federation]


def round_of(message: Message) -> int:
    return int(message.content[protocol.INSTRUCTION]["server_round"])  # type: ignore[call-overload]


def log_traffic(fed: Federation) -> list[tuple[str, str, int]]:
    """``(push|pull, message type, round)`` in the order the server pushed messages and pulled replies
    (round 0: an identity query, which names none)."""
    log: list[tuple[str, str, int]] = []
    grid = fed.grid
    push, pull = grid.push_messages, grid.pull_messages
    types: dict[str, tuple[str, int]] = {}

    def pushed(messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(push(messages))
        for message_id, message in zip(ids, messages, strict=True):
            kind = message.metadata.message_type
            types[message_id] = (kind, 0 if kind == "query.identify" else round_of(message))
            log.append(("push", *types[message_id]))
        return ids

    def pulled(message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(pull(message_ids))
        log.extend(("pull", *types[r.metadata.reply_to_message_id]) for r in replies)
        return replies

    grid.push_messages, grid.pull_messages = pushed, pulled  # type: ignore[method-assign]
    return log


def test_the_next_round_is_selected_while_the_evaluation_is_awaited(make_federation: MakeFederation) -> None:
    # Prepare: 200 nodes, 10 sampled per round: round 2 asks the nodes it samples that round 1 did not bind.
    fed = make_federation(tenants=200)
    log = log_traffic(fed)

    # Execute
    fed.run(fed.config(rounds=2, fraction=0.05, steps=2))

    # Assert: after round 1's evaluate messages left, round 2's identity queries went out before
    # round 1's evaluation replies were collected; round 2's train messages left only after them.
    def first(entry: tuple[str, str, int]) -> int:
        return log.index(entry)

    def last(entry: tuple[str, str, int]) -> int:
        return len(log) - 1 - log[::-1].index(entry)

    eval_sent, eval_pulled = last(("push", "evaluate", 1)), first(("pull", "evaluate", 1))
    round_2_queries = [i for i, e in enumerate(log) if e == ("push", "query.identify", 0) and i > eval_sent]
    assert round_2_queries, "round 2 asked no new node (the sample fell on round 1's nodes)"
    assert eval_sent < min(round_2_queries) and max(round_2_queries) < eval_pulled
    assert last(("pull", "evaluate", 1)) < first(("push", "train", 2))


@pytest.mark.parametrize("dp", ["local", "central"])
def test_a_node_lost_while_the_last_round_is_evaluated_is_failed_offline_and_not_charged(
    make_federation: MakeFederation, dp: str
) -> None:
    # Prepare: tenant-1's node leaves once round 1's evaluation replies are being collected,
    # i.e. after round 2 was selected with it (every tenant trains every round).
    fed = make_federation()
    lost = fed.node_of(1)
    pull = fed.grid.pull_messages

    def pulled(message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(pull(message_ids))
        if any(r.metadata.message_type == "evaluate" for r in replies):
            fed.grid.offline.add(lost)
        return replies

    fed.grid.pull_messages = pulled  # type: ignore[method-assign]
    overrides = {"fraction": 1.0, "central_noise_multiplier": 5.0} if dp == "central" else {}

    # Execute
    result = fed.run(fed.config(rounds=2, dp=dp, round_timeout_s=1.0, **overrides))

    # Assert: round 2 failed it (offline) and charged it nothing; the others trained.
    assert result.last_round == 2
    found = statuses(fed)
    assert found[(2, "tenant-1")] == "failed"
    assert found[(2, "tenant-0")] == found[(2, "tenant-2")] == "accepted"
    assert {e.aggregation_round for e in events_of(fed, 1)} == {1}
    assert {e.aggregation_round for e in events_of(fed, 0)} == {1, 2}


def test_a_withdrawal_during_the_last_rounds_evaluation_keeps_the_tenant_out_of_the_next(
    make_federation: MakeFederation,
) -> None:
    # Prepare: tenant-1's users withdraw while round 1's evaluation replies are being collected,
    # i.e. after round 2 was sampled (and its nodes identified) with tenant-1 in it.
    fed = make_federation()
    pull = fed.grid.pull_messages
    withdrawn: list[bool] = []

    def pulled(message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(pull(message_ids))
        if not withdrawn and any(r.metadata.message_type == "evaluate" for r in replies):
            withdraw_all(fed, 1)
            withdrawn.append(True)
        return replies

    fed.grid.pull_messages = pulled  # type: ignore[method-assign]

    # Execute
    fed.run(fed.config(rounds=2))

    # Assert: round 2's gate saw the withdrawal (admission runs after the evaluation, not with the
    # sample): tenant-1 was refused for consent and charged nothing for round 2.
    found = statuses(fed)
    assert withdrawn and found[(1, "tenant-1")] == "accepted"
    assert found[(2, "tenant-1")] == REJECTED_CONSENT
    assert {e.aggregation_round for e in events_of(fed, 1)} == {1}


def test_the_evaluation_is_collected_when_the_next_rounds_identification_outlasts_its_timeout(
    make_federation: MakeFederation,
) -> None:
    # Prepare: 20 nodes, 5 sampled a round (seeded dp=off: nodes report a metric); identity queries
    # sent while round 1's evaluation is out are never answered, so round 2's selection waits the
    # whole round timeout, past the evaluation's deadline.
    fed = make_federation(tenants=20)
    push, pull = fed.grid.push_messages, fed.grid.pull_messages
    evaluating: list[bool] = []
    muted: list[str] = []

    def pushed(messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(push(messages))
        if any(m.metadata.message_type == "evaluate" for m in messages):
            evaluating.append(True)
        for message_id, message in zip(ids, messages, strict=True):
            if evaluating and message.metadata.message_type == "query.identify":
                fed.grid._replies.pop(message_id, None)  # a node that never answers
                muted.append(message_id)
        return ids

    def pulled(message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(pull(message_ids))
        if any(r.metadata.message_type == "evaluate" for r in replies):
            evaluating.clear()
        return replies

    fed.grid.push_messages, fed.grid.pull_messages = pushed, pulled  # type: ignore[method-assign]

    # Execute
    result = fed.run(fed.config(rounds=2, fraction=0.25, steps=2, dp="off", seed=11, round_timeout_s=0.5))

    # Assert: round 2 asked unanswering nodes during round 1's evaluation, and round 1's metric
    # (the nodes' evaluation replies, already there) was still collected; round 2 trained 5.
    assert muted, "round 2 sampled no new node"
    assert result.rounds[0].metric is not None
    assert len(trained(fed, 2)) == 5


def test_admission_is_retried_after_a_transient_database_error(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the first admission transaction fails after gating (as a deadlock would).
    fed = make_federation()
    gate = Governor._gate
    failures: list[bool] = []

    def flaky(self: Governor, session: Any, server_round: int, tenants: list[Any], admission: Any) -> None:
        gate(self, session, server_round, tenants, admission)
        if not failures:
            failures.append(True)
            raise OperationalError("SELECT 1", {}, Exception("deadlock detected"))

    monkeypatch.setattr(Governor, "_gate", flaky)
    monkeypatch.setattr(governance, "RETRY_DELAYS_S", (0.0,))

    # Execute
    fed.run(fed.config(rounds=1))

    # Assert: retried once; every tenant admitted and trained, one outcome row each.
    found = statuses(fed)
    assert failures
    assert sorted(found) == [(1, t.name) for t in sorted(fed.tenants, key=lambda t: t.name)]
    assert set(found.values()) == {"accepted"}
