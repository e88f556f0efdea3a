"""Real things for the hub tests: RabbitMQ on loopback, a TCP proxy the test can cut, a consumer,
events appended through ``schema.events`` as the domain code does."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from schema import events
from schema.db import transaction
from schema.models.hub import HubOutbox
from schema.timeutil import utcnow

RABBIT_HOST = os.environ.get("ACCUTE_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBIT_PORT = int(os.environ.get("ACCUTE_TEST_RABBITMQ_PORT", "5672"))
RABBIT_URL = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_rabbitmq() -> None:
    """Skip (outside CI) or fail (CI) when the broker does not answer."""
    try:
        with socket.create_connection((RABBIT_HOST, RABBIT_PORT), timeout=2):
            return
    except OSError as exc:
        reason = f"RabbitMQ at {RABBIT_HOST}:{RABBIT_PORT} is unreachable: {exc}"
    if IN_CI:
        pytest.fail(f"{reason} (CI must test RabbitMQ; .ci/run starts it)")
    pytest.skip(reason)


def append_events(
    engine: Engine, tenants: Iterable[uuid.UUID], per_tenant: int, start: int = 0
) -> list[uuid.UUID]:
    """Append ``per_tenant`` consent events for each tenant, interleaved, one transaction per round;
    ``consent_version`` is ``v<index>`` (the tenant's order). Their event ids, in append order."""
    tenants = list(tenants)
    ids: list[uuid.UUID] = []
    for index in range(start, start + per_tenant):
        with transaction(engine) as session:
            for tenant in tenants:
                ids.append(
                    events.append(
                        session,
                        event_type="accute.consent.granted",
                        organization_id=tenant,
                        payload={
                            "consent_id": uuid.uuid4(),
                            "user_id": uuid.uuid4(),
                            "consent_type": "federated_learning",
                            "consent_version": f"v{index}",
                        },
                    )
                )
    return ids


def statuses(engine: Engine) -> dict[str, int]:
    with transaction(engine) as session:
        rows = session.execute(select(HubOutbox.status)).scalars().all()
    counts: dict[str, int] = {}
    for status in rows:
        counts[status] = counts.get(status, 0) + 1
    return counts


def age_events(engine: Engine, ids: list[uuid.UUID], status: str, days: float) -> None:
    """Set the events' status; published ones acknowledged ``days`` ago."""
    with transaction(engine) as session:
        session.execute(
            update(HubOutbox)
            .where(HubOutbox.event_id.in_(ids))
            .values(
                status=status, published_at=utcnow() - timedelta(days=days) if status == "published" else None
            )
        )


def remaining_event_ids(engine: Engine) -> set[uuid.UUID]:
    with transaction(engine) as session:
        return set(session.scalars(select(HubOutbox.event_id)))


@dataclass(frozen=True)
class Received:
    event_id: str
    tenant: str
    index: int
    sequence: int
    routing_key: str
    persistent: bool
    body: dict[str, Any]


class Consumer:
    """A queue bound to the test's exchange with '#', read in a background thread's loop."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.queue = f"{exchange}.q"
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._connection: Any = None

    def __enter__(self) -> Consumer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _start(self) -> None:
        import aio_pika

        self._connection = await aio_pika.connect(RABBIT_URL)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.queue, exclusive=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_message)

    async def _on_message(self, message: Any) -> None:
        async with message.process():
            body = json.loads(message.body)
            received = Received(
                event_id=str(message.message_id),
                tenant=str(body["tenant_id"]),
                index=int(body["payload"]["consent_version"][1:])
                if "consent_version" in body["payload"]
                else -1,
                sequence=int(message.headers["x-accute-sequence"]),
                routing_key=message.routing_key,
                persistent=message.delivery_mode == 2,
                body=body,
            )
            with self._lock:
                self.messages.append(received)

    async def _stop(self) -> None:
        channel = await self._connection.channel()
        await channel.exchange_delete(self.exchange)
        await self._connection.close()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Block until ``count`` distinct event ids arrived (or the timeout)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.snapshot()
            if len({m.event_id for m in seen}) >= count:
                return seen
            time.sleep(0.05)
        return self.snapshot()


def first_seen(messages: list[Received]) -> list[Received]:
    """Deduplicated by event id, keeping each event's first delivery (what a consumer keeps)."""
    seen: set[str] = set()
    kept: list[Received] = []
    for message in messages:
        if message.event_id not in seen:
            seen.add(message.event_id)
            kept.append(message)
    return kept


def in_order_per_tenant(messages: list[Received]) -> bool:
    last: dict[str, int] = {}
    for message in messages:
        if message.index <= last.get(message.tenant, -1):
            return False
        last[message.tenant] = message.index
    return True


class TcpProxy:
    """A loopback TCP proxy to the broker, on its own thread; ``cut()`` drops every connection and
    refuses new ones, ``restore()`` accepts again on the same port."""

    def __init__(self, target: tuple[str, int] = (RABBIT_HOST, RABBIT_PORT)) -> None:
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def hold(self) -> None:
        """Stop forwarding what the broker sends (its confirms) until ``release()``."""
        self._loop.call_soon_threadsafe(self._gate().clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._gate().set)

    def _gate(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    def restore(self) -> None:
        async def listen() -> None:
            self._gate()
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

        self._call(listen())

    def cut(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(close())

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gated: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if gated:
                        await self._gate().wait()
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()
                self._writers.discard(writer)

        await asyncio.gather(
            pipe(client_reader, upstream_writer, False), pipe(upstream_reader, client_writer, True)
        )
