"""Flower's simulation engine asks for messages only on behalf of nodes that have one waiting.

Flower 1.42's ``vce_api.add_messages_to_queue`` asks the link state for the next message of *every*
registered node every 0.1 s, and each ask walks every stored message with a TTL and federation
check. At 10,000 simulated tenants and a round's ~20 messages that is ~200,000 checks per tenth of a
second in the ServerApp's process, holding the GIL the server thread needs: a governed round took
4-6 s at 10,000 tenants against ~1 s at 10 with the same 10 trained (BENCHMARKS.md, "Simulation"),
so the round time was set by the registered tenants, not the sampled ones (issue 16).

The sweep here makes the same call (``get_message_ins(node_id, limit=1)``, one message per node per
tick) only for the nodes an undelivered message names, every ``SWEEP_INTERVAL_S``, so what is delivered, in which
order per node, and Flower's TTL expiry and federation check are Flower's own. Finding those nodes
reads ``InMemoryLinkState.message_ins_store`` under the state's lock, a private field: the sweep is
installed only for the Flower release it was written against and used only on that state class;
anything else runs Flower's sweep unchanged. A shim, not a fork — drop it once Flower's engine
stops visiting every node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from queue import Queue
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.server.superlink.linkstate import LinkState

SHIMMED_FLOWER_RELEASE = "1.42."
#: Seconds between two sweeps. Flower's is 0.1 s: a message pushed just after a sweep waited up to
#: that long before a node got it, twice a round (train, evaluate), which set the length of a
#: short simulated round. A narrowed sweep asks only for the nodes with a message waiting, so it
#: can look every 10 ms for little: rounds of the 4-tenant benchmark went from 0.2-0.3 s to
#: 0.15-0.2 s (BENCHMARKS.md, "Governance overhead", session 9).
SWEEP_INTERVAL_S = 0.01

Sweep = Callable[["LinkState", "Queue[Message]", dict[int, int], threading.Event], None]


def nodes_with_waiting_messages(state: Any, registered: Mapping[int, int]) -> list[int]:
    """The registered nodes an undelivered message is addressed to, in the order they were sent."""
    with state.lock:
        waiting = dict.fromkeys(
            message.metadata.dst_node_id
            for message in state.message_ins_store.values()
            if message.metadata.delivered_at == ""
        )
    return [node_id for node_id in waiting if node_id in registered]


def deliver_waiting_messages(
    state: Any,
    queue: Queue[Message],
    nodes_mapping: Mapping[int, int],
    f_stop: threading.Event,
) -> None:
    """Flower's sweep, visiting only the nodes with a message waiting."""
    while not f_stop.is_set():
        node_ids = nodes_with_waiting_messages(state, nodes_mapping)
        if not node_ids and nodes_mapping and state.message_ins_store:
            # Nothing to deliver, but Flower's sweep also expires stale messages on every ask: one
            # ask (it walks every stored message) keeps that.
            node_ids = [next(iter(nodes_mapping))]
        for node_id in node_ids:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(SWEEP_INTERVAL_S)


def narrowed(flower_sweep: Sweep) -> Sweep:
    """Flower's sweep for any state but the in-memory one the narrowed sweep was written against."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    def sweep(
        state: LinkState,
        queue: Queue[Message],
        nodes_mapping: dict[int, int],
        f_stop: threading.Event,
    ) -> None:
        if isinstance(state, InMemoryLinkState):
            deliver_waiting_messages(state, queue, nodes_mapping, f_stop)
        else:
            flower_sweep(state, queue, nodes_mapping, f_stop)

    return sweep


@contextmanager
def narrow_delivery_sweep(enabled: bool = True) -> Iterator[bool]:
    """Install the narrowed sweep for simulations started inside; yields whether it is installed."""
    from flwr.server.superlink.fleet.vce import vce_api

    if not enabled or not version("flwr").startswith(SHIMMED_FLOWER_RELEASE):
        yield False
        return
    flower_sweep = vce_api.add_messages_to_queue
    vce_api.add_messages_to_queue = narrowed(flower_sweep)  # type: ignore[assignment]
    try:
        yield True
    finally:
        vce_api.add_messages_to_queue = flower_sweep
