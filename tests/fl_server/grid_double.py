"""An in-process Grid that delivers messages to the real ClientApp, with hooks to misbehave.

Not a mock of our code: replies are produced by ``fl_client.app``'s handlers and mods. The grid
only replaces Flower's transport, so wrapper tests run in milliseconds and can tamper with a
reply (NaN, wrong shapes, another organization…) the way a faulty or hostile node would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

Tamper = Callable[[Message, Message], Message]


class LocalGrid(Grid):
    def __init__(self, client_app: ClientApp, node_configs: dict[int, dict[str, Any]]) -> None:
        # Flower's runtimes set the process's task identity; messages are stamped with it.
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = 1
        TaskIdentity.task_id = 1
        self.client_app = client_app
        self.contexts = {
            node_id: Context(run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={})
            for node_id, config in node_configs.items()
        }
        self.tamper: dict[int, Tamper] = {}
        self.down: set[int] = set()
        #: Nodes that left: the link no longer lists them, and messages to them are never answered.
        self.offline: set[int] = set()
        self._replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            ids.append(message.metadata.message_id)
            if node_id in self.offline:
                continue
            if node_id in self.down and message.metadata.message_type.startswith("train"):
                continue  # died while training: never answers, the server's timeout decides
            try:
                reply = self.client_app(message, self.contexts[node_id])
            except Exception as exc:
                reply = Message(Error(code=1, reason=str(exc)), reply_to=message)
            if node_id in self.tamper and message.metadata.message_type.startswith("train"):
                reply = self.tamper[node_id](message, reply)
            self._replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
