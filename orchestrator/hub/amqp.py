"""The RabbitMQ sink: a durable topic exchange, routing key = event type, publisher confirms.

A batch is written in ``sequence`` order on one channel (RabbitMQ keeps a channel's order into a
queue) without waiting for each confirm, then the confirms are awaited together: one round trip
per batch, not per event. Every message is persistent, carries ``message_id = event_id`` (the
consumer's deduplication key) and the tenant's ``sequence`` in the headers.

The connection is plain (not "robust"): on any connection or channel error the sink drops it and
the next batch reconnects. Events whose confirm did not arrive count as failed and are sent
again — at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from orchestrator.hub.sink import Acked, Outcome, Refused, SinkUnavailableError, body, first_line, redact_url
from orchestrator.hub.store import Claimed
from schema.timeutil import utcnow


class AmqpSink:
    name = "amqp"

    def __init__(
        self,
        url: str,
        exchange: str = "finaid.events",
        *,
        timeout_s: float = 10.0,
        confirm_timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.exchange_name = exchange
        self.timeout_s = timeout_s
        self.confirm_timeout_s = confirm_timeout_s
        self._connection: Any = None
        self._exchange: Any = None

    async def _ready(self) -> Any:
        import aio_pika

        if self._exchange is not None and self._connection is not None and not self._connection.is_closed:
            return self._exchange
        await self._drop()
        try:
            self._connection = await aio_pika.connect(self.url, timeout=self.timeout_s)
            channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except Exception as exc:
            await self._drop()
            raise SinkUnavailableError(
                f"RabbitMQ at {redact_url(self.url)} is unreachable ({first_line(exc)})"
            ) from None
        return self._exchange

    async def publish(self, batch: Sequence[Claimed]) -> list[Outcome]:
        import aio_pika

        exchange = await self._ready()
        messages = [
            aio_pika.Message(
                body(event),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(event.event_id),
                correlation_id=event.correlation_id,
                type=event.event_type,
                app_id="accute",
                timestamp=event.occurred_at,
                headers={
                    "x-accute-sequence": event.sequence,
                    "x-accute-tenant": "" if event.organization_id is None else str(event.organization_id),
                },
            )
            for event in batch
        ]
        # gather starts the publishes in list order and each takes the channel's (FIFO) write lock
        # before it first suspends, so the frames leave in sequence order; the confirms are then
        # awaited together (one round trip per batch). The ordering tests check it at the consumer.
        results = await asyncio.gather(
            *(self._send(exchange, m, e.event_type) for m, e in zip(messages, batch, strict=True)),
            return_exceptions=True,
        )
        outcomes: list[Outcome] = []
        broken = False
        for result in results:
            if isinstance(result, BaseException):
                broken = broken or not isinstance(result, aio_pika.exceptions.DeliveryError)
                outcomes.append(Refused(first_line(result)))
            else:
                outcomes.append(Acked(result))
        if broken:
            await self._drop()
        return outcomes

    async def _send(self, exchange: Any, message: Any, routing_key: str) -> datetime:
        """Publish and wait for the confirm; the time of the ack (the end of commit→ack latency)."""
        await exchange.publish(
            message, routing_key=routing_key, mandatory=False, timeout=self.confirm_timeout_s
        )
        return utcnow()

    async def _drop(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already gone: nothing to release
                await asyncio.wait_for(connection.close(), timeout=2)

    async def close(self) -> None:
        await self._drop()
