"""Lazy identification: a round asks only the nodes it samples (and their replacements) who they are.

Under local DP and dp=off the server samples node ids first and binds only the sampled ones, so a
round among many nodes does not first send every node an identity query. A node is asked once:
bound nodes and nodes skipped at binding are not asked again. Central DP still identifies every
connected node once per run (its Poisson sample and its population are over tenants).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable

import pytest
from flwr.app import Context, Message, RecordDict
from sqlalchemy import func, select

from fl_client import protocol
from fl_server.governance import REJECTED_CONSENT
from fl_server.strategy import RoundRecord
from schema.db import transaction
from schema.models import FlNodeBinding
from tests.fl_server.conftest import Federation
from tests.fl_server.test_admission import outcome_rows, trained, withdraw_all

MakeFederation = Callable[..., Federation]


def asked(fed: Federation) -> list[int]:
    """Every identity query the server sent, by destination node, in order."""
    return [m.metadata.dst_node_id for m in fed.grid.sent if m.metadata.message_type == "query.identify"]


def asked_per_round(fed: Federation) -> tuple[list[list[int]], Callable[[RoundRecord], None]]:
    """An ``on_round`` callback that records the identity queries each round sent.

    A round's queries are those sent after the previous round's train messages and before its
    own: round r+1 is sampled (and its new nodes asked) while round r's evaluation is awaited,
    before ``on_round`` reports round r.
    """
    rounds: list[list[int]] = []

    def on_round(record: RoundRecord) -> None:
        current, queries = 1, []
        for message in fed.grid.sent:
            if message.metadata.message_type == "train":
                instruction = protocol.TrainInstruction.from_record(message.content[protocol.INSTRUCTION])
                current = instruction.server_round + 1
            elif message.metadata.message_type == "query.identify" and current == record.server_round:
                queries.append(message.metadata.dst_node_id)
        rounds.append(queries)

    return rounds, on_round


def bindings(fed: Federation) -> int:
    with transaction(fed.engine) as session:
        return int(session.scalar(select(func.count()).select_from(FlNodeBinding)) or 0)


@pytest.mark.parametrize("dp", ["local", "off"])
def test_a_round_asks_only_the_sampled_nodes_who_they_are(make_federation: MakeFederation, dp: str) -> None:
    # Prepare: 200 nodes, none bound yet; fraction 0.05: 10 sampled per round, all eligible.
    fed = make_federation(tenants=200)
    rounds, on_round = asked_per_round(fed)

    # Execute
    fed.run(fed.config(rounds=2, fraction=0.05, steps=2, dp=dp), on_round=on_round)

    # Assert: round 1 asked exactly the 10 nodes it trained (not the 200); round 2 asked only its
    # sampled nodes that round 1 had not bound; no node was asked twice; one binding per node asked.
    assert sorted(rounds[0]) == sorted(trained(fed, 1)) and len(rounds[0]) == 10
    assert sorted(rounds[1]) == sorted(set(trained(fed, 2)) - set(trained(fed, 1)))
    assert max(Counter(asked(fed)).values()) == 1
    assert bindings(fed) == len(asked(fed)) == len(set(trained(fed, 1)) | set(trained(fed, 2)))


def test_replacements_for_tenants_failing_the_gate_are_identified_as_they_are_drawn(
    make_federation: MakeFederation,
) -> None:
    # Prepare: 40 nodes; 25 of their tenants hold no consent; 4 sampled per round (a seeded dp=off
    # run: its sample and its replacement draws are reproducible).
    fed = make_federation(tenants=40)
    for index in range(15, 40):
        withdraw_all(fed, index)
    rounds, on_round = asked_per_round(fed)

    # Execute
    fed.run(fed.config(rounds=1, fraction=0.1, steps=2, dp="off"), on_round=on_round)

    # Assert: the round asked exactly the nodes it tried: those it trained and those the gate
    # refused (their outcome rows), sampled or drawn as replacements; never the others.
    refused = {r.tenant for r in outcome_rows(fed) if r.status == REJECTED_CONSENT}
    assert refused, "the seeded sample drew a tenant without consent"
    tried = set(trained(fed, 1)) | {fed.node_of(int(name.split("-")[1])) for name in refused}
    assert sorted(rounds[0]) == sorted(tried)
    assert len(trained(fed, 1)) == 4 and len(rounds[0]) < 40


def test_a_sampled_node_that_does_not_identify_is_replaced_and_not_asked_again(
    make_federation: MakeFederation,
) -> None:
    # Prepare: 6 genuine nodes and 6 nodes naming organizations that do not exist; half of the 12
    # connected nodes are sampled in round 1.
    fed = make_federation(tenants=6)
    base = dict(fed.grid.contexts[fed.node_of(0)].node_config)
    impostors = set(range(3000, 3006))
    for node_id in impostors:
        config = base | {
            protocol.NODE_ORGANIZATION: str(uuid.uuid4()),
            protocol.NODE_TENANT: f"ghost-{node_id}",
        }
        fed.grid.contexts[node_id] = Context(
            run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={}
        )
    genuine = {fed.node_of(i) for i in range(6)}
    rounds, on_round = asked_per_round(fed)
    strategy = fed.strategy(fed.config(rounds=2, fraction=0.5, steps=2), on_round=on_round)
    # The nodes skipped by each round's end of training: round r+1's identification starts once
    # round r's evaluate messages are out.
    skipped_after: list[set[int]] = []
    push = fed.grid.push_messages

    def pushed(messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        if any(m.metadata.message_type == "evaluate" for m in messages):
            skipped_after.append(set(strategy.skipped_nodes))
        return push(messages)

    fed.grid.push_messages = pushed  # type: ignore[method-assign]
    from aggregation.flwr_adapter import record_from_arrays
    from fl_client.tasks import get_task

    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(3).items()}

    # Execute
    strategy.start(fed.grid, record_from_arrays(initial))

    # Assert: round 1 trains the 6 genuine nodes (each sampled impostor was skipped at binding and
    # replaced); round 2 trains genuine nodes only and asks none of the nodes skipped in round 1;
    # no node is asked twice.
    assert sorted(trained(fed, 1)) == sorted(genuine)
    assert skipped_after[0] and skipped_after[0] <= impostors
    assert set(trained(fed, 2)) <= genuine and set(rounds[1]).isdisjoint(skipped_after[0])
    assert all("does not exist" in why for why in strategy.skipped_nodes.values())
    counts = Counter(asked(fed))
    assert max(counts.values()) == 1 and strategy.identity_queries == len(counts)


def test_a_node_whose_identity_query_fails_is_replaced_and_asked_again_when_drawn_again(
    make_federation: MakeFederation,
) -> None:
    # Prepare: 4 tenants; node 0 answers every identity query with an error; all 4 are sampled.
    fed = make_federation(tenants=4)
    broken = fed.node_of(0)
    client_app = fed.grid.client_app

    def failing(message: Message, context: Context) -> Message:
        if context.node_id == broken and message.metadata.message_type == "query.identify":
            raise RuntimeError("identity store unavailable")
        return client_app(message, context)

    fed.grid.client_app = failing  # type: ignore[assignment]

    # Execute
    fed.run(fed.config(rounds=2, fraction=1.0, steps=2))

    # Assert: the three others train each round; the broken node is asked once per round (it stays
    # unknown) and never trained; nothing is bound for it.
    for server_round in (1, 2):
        assert sorted(trained(fed, server_round)) == sorted(fed.node_of(i) for i in (1, 2, 3))
    assert Counter(asked(fed))[broken] == 2
    assert bindings(fed) == 3


def test_central_dp_identifies_every_connected_node_once_per_run(make_federation: MakeFederation) -> None:
    # Prepare: 20 nodes; central DP samples tenants (Poisson, q = 0.2) over the bound ones.
    fed = make_federation(tenants=20)
    rounds, on_round = asked_per_round(fed)
    populations: list[int] = []
    config = fed.config(rounds=2, dp="central", fraction=0.2, central_noise_multiplier=5.0, steps=2)

    # Execute
    fed.run(config, on_round=lambda record: (on_round(record), populations.append(record.central_population)))

    # Assert: round 1 asked all 20 (the population charged the central event is every eligible
    # bound tenant), round 2 none; each round charged all 20 the central event.
    assert sorted(rounds[0]) == sorted(fed.node_of(i) for i in range(20)) and rounds[1] == []
    assert bindings(fed) == 20 and populations == [20, 20]


def test_a_rounds_new_nodes_are_bound_in_one_transaction_with_reads_for_the_batch(
    make_federation: MakeFederation,
) -> None:
    # Prepare: 60 nodes, 20 sampled in round 1 (none bound yet); count the statements and commits
    # of the identification (``_bind``) of that round.
    from sqlalchemy import event

    fed = make_federation(tenants=60)
    strategy = fed.strategy(fed.config(rounds=1, fraction=1 / 3, steps=2))
    statements: list[str] = []
    commits: list[int] = []
    binding = [False]
    original = strategy._bind

    def counted_bind(*args, **kwargs):  # type: ignore[no-untyped-def]
        binding[0] = True
        try:
            return original(*args, **kwargs)
        finally:
            binding[0] = False

    def record(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if binding[0]:
            statements.append(statement)

    def committed(conn):  # type: ignore[no-untyped-def]
        if binding[0]:
            commits.append(1)

    strategy._bind = counted_bind  # type: ignore[method-assign]
    event.listen(fed.engine, "before_cursor_execute", record)
    event.listen(fed.engine, "commit", committed)
    from aggregation.flwr_adapter import record_from_arrays
    from fl_client.tasks import get_task

    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(1).items()}

    # Execute
    try:
        strategy.start(fed.grid, record_from_arrays(initial))
    finally:
        event.remove(fed.engine, "before_cursor_execute", record)
        event.remove(fed.engine, "commit", committed)

    # Assert: 20 nodes bound with one commit; the reads are three for the batch (its nodes'
    # bindings, its organizations, their bindings), not three per node; the 20 rows inserted.
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO FL_NODE_BINDINGS")]
    assert len(asked(fed)) == 20 and bindings(fed) == 20
    assert len(commits) == 1
    assert len(reads) <= 4, reads
    assert 1 <= len(inserts) <= 20
