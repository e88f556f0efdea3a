"""The HTTP hub as a sink: one ``POST /events`` per event, a tenant's events one after another.

Tenants go in parallel (``concurrency`` requests at once); within a tenant the next event is sent
only after the hub accepted the previous one, and a failure leaves the tenant's later events of the
batch untried — so the hub sees each tenant's events in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from orchestrator.hub.client import HubClient, HubRefusal
from orchestrator.hub.sink import Acked, NotTried, Outcome, Refused, body
from orchestrator.hub.store import Claimed, by_tenant
from schema.timeutil import utcnow


class HttpSink:
    name = "http"

    def __init__(self, client: HubClient, *, concurrency: int = 16) -> None:
        self.client = client
        self._slots = asyncio.Semaphore(concurrency)

    async def publish(self, batch: Sequence[Claimed]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}

        async def tenant(events: list[Claimed]) -> None:
            for index, event in enumerate(events):
                async with self._slots:
                    try:
                        await self.client.publish_event(body(event), event.event_id)
                    except HubRefusal as refusal:
                        outcomes[event.sequence] = Refused(refusal.reason, refusal.retry_after_s)
                        for later in events[index + 1 :]:
                            outcomes[later.sequence] = NotTried()
                        return
                outcomes[event.sequence] = Acked(utcnow())

        await asyncio.gather(*(tenant(events) for events in by_tenant(batch).values()))
        return [outcomes[event.sequence] for event in batch]

    async def close(self) -> None:
        await self.client.close()
