"""The narrowed delivery sweep hands Flower's engine what Flower's sweep would, asking only for
nodes with a message waiting; it stays out of any other Flower release or link state."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from queue import Queue
from typing import Any

import pytest
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from simulations import flower_delivery
from simulations.flower_delivery import deliver_waiting_messages, narrow_delivery_sweep

REGISTERED = 400
FLOWER_SWEEP = vce_api.add_messages_to_queue


@dataclass
class Engine:
    """Flower's own in-memory link state with registered simulation nodes and one run's grid."""

    state: Any
    nodes: dict[int, int]
    grid: InMemoryGrid

    def send(self, node_ids: list[int], message_type: str = "train") -> list[str]:
        messages = [Message(RecordDict(), node_id, message_type, group_id="1") for node_id in node_ids]
        return list(self.grid.push_messages(messages))


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    for name in ("_run_id", "_task_id", "_node_id"):  # Flower's process-wide identity, restored after
        monkeypatch.setattr(TaskIdentity, name, getattr(TaskIdentity, name))
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    nodes = vce_api._register_nodes(REGISTERED, factory)
    state = factory.state()
    run_id = state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, "serverapp")
    TaskIdentity.run_id = run_id
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid = InMemoryGrid(factory)
    grid.set_run(state.get_run_info(run_ids=[run_id])[0])
    yield Engine(state, nodes, grid)


class CountingState:
    """Flower's state, counting the nodes its sweep asks for (every other call passes through)."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int | None) -> list[Message]:
        self.asked.append(node_id)
        result: list[Message] = self._state.get_message_ins(node_id=node_id, limit=limit)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def sweep_for(sweep: Any, state: Any, nodes: dict[int, int], seconds: float) -> list[Message]:
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    thread = threading.Thread(target=sweep, args=(state, queue, nodes, stop))
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    return [queue.get_nowait() for _ in range(queue.qsize())]


def test_it_delivers_what_flowers_sweep_delivers_asking_only_for_the_waiting_nodes(engine: Engine) -> None:
    # Prepare: 3 of 400 nodes have messages, one of them two (limit 1: one a tick, as Flower).
    node_ids = list(engine.nodes)
    targets = [node_ids[7], node_ids[150], node_ids[399]]
    sent = engine.send(targets) + engine.send([targets[0]], "evaluate")
    counting = CountingState(engine.state)

    # Execute
    delivered = sweep_for(deliver_waiting_messages, counting, engine.nodes, seconds=0.45)

    # Assert: every message once, the node's two in the order sent; no node without a message asked,
    # but for the one ask a tick that keeps Flower's expiry once nothing waits.
    assert sorted(m.metadata.message_id for m in delivered) == sorted(sent)
    to_first = [m.metadata.message_type for m in delivered if m.metadata.dst_node_id == targets[0]]
    assert to_first == ["train", "evaluate"]
    assert set(targets) <= set(counting.asked)
    assert set(counting.asked) - set(targets) <= {node_ids[0]}
    assert len(counting.asked) < REGISTERED  # the whole sweep asks less than one tick of Flower's
    assert all(m.metadata.delivered_at != "" for m in engine.state.message_ins_store.values())


def test_flowers_own_sweep_asks_for_every_registered_node(engine: Engine) -> None:
    # The cost the shim removes: the same delivery, but every node asked each tick.
    sent = engine.send([next(iter(engine.nodes))])
    counting = CountingState(engine.state)

    delivered = sweep_for(vce_api.add_messages_to_queue, counting, engine.nodes, seconds=0.15)

    assert [m.metadata.message_id for m in delivered] == sent
    assert len(counting.asked) >= REGISTERED


def test_expired_messages_are_still_expired_when_nothing_waits(engine: Engine) -> None:
    # Prepare: one delivered message whose TTL has run out (Flower expires it on any ask).
    node_id = next(iter(engine.nodes))
    [message_id] = engine.send([node_id])
    engine.state.get_message_ins(node_id=node_id, limit=1)
    engine.state.message_ins_store[message_id].metadata.ttl = 0.001

    # Execute
    delivered = sweep_for(deliver_waiting_messages, engine.state, engine.nodes, seconds=0.15)

    # Assert
    assert delivered == []
    assert message_id not in engine.state.message_ins_store


def test_the_shim_is_installed_for_its_release_and_removed_after() -> None:
    with narrow_delivery_sweep() as installed:
        assert installed
        assert vce_api.add_messages_to_queue is not FLOWER_SWEEP
    assert vce_api.add_messages_to_queue is FLOWER_SWEEP


@pytest.mark.parametrize("release", ["1.43.0", "1.41.2", "2.0.0"])
def test_another_flower_release_keeps_flowers_sweep(release: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower_delivery, "version", lambda _: release)
    with narrow_delivery_sweep() as installed:
        assert not installed
        assert vce_api.add_messages_to_queue is FLOWER_SWEEP


def test_switched_off_keeps_flowers_sweep() -> None:
    with narrow_delivery_sweep(enabled=False) as installed:
        assert not installed
        assert vce_api.add_messages_to_queue is FLOWER_SWEEP


def test_another_link_state_runs_flowers_sweep(engine: Engine) -> None:
    # A state that is not Flower's in-memory one (the wrapper stands in) gets Flower's every-node sweep.
    engine.send([next(iter(engine.nodes))])
    counting = CountingState(engine.state)
    with narrow_delivery_sweep():
        sweep = vce_api.add_messages_to_queue
    delivered = sweep_for(sweep, counting, engine.nodes, seconds=0.15)
    assert len(delivered) == 1
    assert len(counting.asked) >= REGISTERED
