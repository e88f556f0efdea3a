"""Building a relay from the settings, for ``accute-fl hub relay`` and for ``serve``.

With neither ``ACCUTE_HUB_AMQP_URL`` nor ``ACCUTE_HUB_URL`` set there is no relay: events stay
pending in the outbox and nothing fails (issue 13, item 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from orchestrator.hub.backoff import RetryPolicy
from orchestrator.hub.client import HubClient
from orchestrator.hub.relay import Relay
from orchestrator.hub.sink import Sink
from orchestrator.hub.store import Claimed
from orchestrator.hub.workflows import WorkflowBook, dispatch, load, record
from schema.config import Settings

log = logging.getLogger("accute.hub")


def configured(settings: Settings) -> bool:
    return settings.hub_amqp_url is not None or bool(settings.hub_url)


def policy_of(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.hub_max_attempts,
        initial_s=settings.hub_backoff_base_s,
        max_s=settings.hub_backoff_max_s,
    )


@dataclass
class Wiring:
    relay: Relay
    client: HubClient | None
    book: WorkflowBook

    dispatch_every_s: float = 0.5
    _last_dispatch: float = float("-inf")

    async def between(self) -> None:
        """After a relay step: start the workflow executions that are due (needs the HTTP hub); at
        most every ``dispatch_every_s``, so a busy relay does not pay a query per batch."""
        if self.client is None or not self.book.workflows:
            return
        now = time.monotonic()
        if now - self._last_dispatch < self.dispatch_every_s:
            return
        self._last_dispatch = now
        await dispatch(self.relay.engine, self.client, self.relay.policy)

    async def dispatch_now(self) -> None:
        """Start what is due now, unthrottled (the end of ``hub relay --once``)."""
        if self.client is not None and self.book.workflows:
            await dispatch(self.relay.engine, self.client, self.relay.policy)


def _record(book: WorkflowBook, session: Session, events: Sequence[Claimed]) -> None:
    record(session, book, events)


def build(settings: Settings, engine: Engine) -> Wiring | None:
    """The relay and its sinks for these settings; None when no sink is configured."""
    if not configured(settings):
        return None
    sinks: list[Sink] = []
    if settings.hub_amqp_url is not None:
        from orchestrator.hub.amqp import AmqpSink  # aio-pika only for a relay that publishes to AMQP

        sinks.append(
            AmqpSink(
                settings.hub_amqp_url.get_secret_value(),
                settings.hub_exchange,
                timeout_s=settings.hub_timeout_s,
                confirm_timeout_s=settings.hub_timeout_s,
            )
        )
    client: HubClient | None = None
    if settings.hub_url:
        from orchestrator.hub.http_sink import HttpSink

        token = settings.hub_token.get_secret_value() if settings.hub_token is not None else None
        sinks.append(HttpSink(HubClient(settings.hub_url, token, timeout_s=settings.hub_timeout_s)))
        client = HubClient(settings.hub_url, token, timeout_s=settings.hub_timeout_s)
    book = load(settings.hub_workflows_file)
    relay = Relay(
        engine,
        sinks,
        policy=policy_of(settings),
        batch_size=settings.hub_batch_size,
        lease_s=settings.hub_lease_s,
        on_published=partial(_record, book) if book.workflows else None,
    )
    return Wiring(relay, client, book)


@contextlib.asynccontextmanager
async def background(settings: Settings, engine: Engine) -> AsyncIterator[asyncio.Task[object] | None]:
    """Run the relay as a background task for the life of the block (``serve``'s lifespan)."""
    wiring = build(settings, engine)
    if wiring is None:
        yield None
        return
    stop = asyncio.Event()

    async def run() -> object:
        try:
            return await wiring.relay.run(stop, idle_s=settings.hub_poll_s, between=wiring.between)
        except Exception:
            log.exception("the hub relay stopped; events stay in the outbox until it runs again")
            raise
        finally:
            if wiring.client is not None:
                await wiring.client.close()

    task = asyncio.create_task(run(), name="accute-hub-relay")
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
