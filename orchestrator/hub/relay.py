"""The outbox relay: committed events to RabbitMQ and/or the HTTP hub, at least once, in order.

One ``step``: claim a batch (``store.claim``: leased, a tenant's rows only as an unbroken prefix of
its pending events), hand it to every sink, then settle it in one transaction:

- acknowledged by every sink → ``published`` (``published_at`` = the ack; commit→ack latency);
- the first failure of a tenant → one more attempt, backoff with jitter (``RetryPolicy``), ``dead``
  after ``max_attempts``; the tenant's later rows of the batch are released untried (or, if a
  pipelined sink had them already, sent again after it: duplicates, never a gap in the order);
- a sink that cannot be reached at all → the batch is released without charging an attempt and the
  relay waits before reconnecting, so an outage does not fill the dead letters.

Matching workflow triggers are recorded in the settling transaction (``workflows.record``), so a
published event starts each of its workflows once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from orchestrator.hub import store
from orchestrator.hub.backoff import RetryPolicy
from orchestrator.hub.metrics import LOCAL, RelayStats
from orchestrator.hub.sink import Acked, NotTried, Outcome, Refused, Sink, SinkUnavailableError
from orchestrator.hub.store import Claimed, Failure
from schema.errors import DatabaseUnavailableError

#: Called in the settling transaction with the events just published (workflow triggers).
OnPublished = Callable[[Session, Sequence[Claimed]], None]


@dataclass
class BatchReport:
    """What one step did (the CLI prints it as a progress line)."""

    claimed: int = 0
    published: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    unavailable: str | None = None
    latencies_ms: list[float] = field(default_factory=list)


def combine(per_sink: Sequence[Sequence[Outcome]], size: int) -> list[Outcome]:
    """One outcome per event over all sinks: acknowledged only if every sink acknowledged it."""
    combined: list[Outcome] = []
    for index in range(size):
        outcomes = [outcomes[index] for outcomes in per_sink]
        refused = [o for o in outcomes if isinstance(o, Refused)]
        if refused:
            combined.append(refused[0])
        elif any(isinstance(o, NotTried) for o in outcomes):
            combined.append(NotTried())
        else:
            acks = [o for o in outcomes if isinstance(o, Acked)]
            combined.append(Acked(max(a.at for a in acks)))
    return combined


def split(
    batch: Sequence[Claimed], outcomes: Sequence[Outcome]
) -> tuple[list[tuple[Claimed, datetime]], list[Failure], list[int]]:
    """Published, failed and released rows: a tenant's rows count as published only up to its first
    row that was not acknowledged; that row failed (if tried) and every later one is released."""
    published: list[tuple[Claimed, datetime]] = []
    failed: list[Failure] = []
    released: list[int] = []
    stopped: set[uuid.UUID | None] = set()
    for event, outcome in sorted(zip(batch, outcomes, strict=True), key=lambda pair: pair[0].sequence):
        tenant = event.organization_id
        if tenant in stopped:
            released.append(event.sequence)
        elif isinstance(outcome, Acked):
            published.append((event, outcome.at))
        else:
            stopped.add(tenant)
            if isinstance(outcome, Refused):
                failed.append(Failure(event.sequence, outcome.error, outcome.retry_after_s))
            else:
                released.append(event.sequence)
    return published, failed, released


def default_relay_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Relay:
    """Moves outbox rows to the sinks; one instance per process is enough (it batches)."""

    def __init__(
        self,
        engine: Engine,
        sinks: Sequence[Sink],
        *,
        policy: RetryPolicy | None = None,
        batch_size: int = 500,
        lease_s: float = 60.0,
        reconnect_max_s: float = 5.0,
        relay_id: str | None = None,
        on_published: OnPublished | None = None,
        stats: RelayStats = LOCAL,
    ) -> None:
        if not sinks:
            raise ValueError("a relay needs at least one sink")
        self.engine = engine
        self.sinks = list(sinks)
        self.policy = policy or RetryPolicy()
        self.batch_size = batch_size
        self.lease_s = lease_s
        self.reconnect_max_s = reconnect_max_s
        self.relay_id = relay_id or default_relay_id()
        self.on_published = on_published
        self.stats = stats
        self._unavailable_streak = 0
        self._unsettled: (
            tuple[list[tuple[Claimed, datetime]], list[Failure], list[int], Sequence[Claimed]] | None
        ) = None

    async def step(self) -> BatchReport:
        """Claim, publish and settle one batch (an empty report when nothing is due)."""
        if self._unsettled is not None:
            # The last batch's outcome could not be written (database unreachable): write it first,
            # rather than let its lease run out and publish it again.
            await asyncio.to_thread(self._settle, *self._unsettled)
            self._unsettled = None
        batch = await asyncio.to_thread(
            store.claim, self.engine, self.relay_id, limit=self.batch_size, lease_s=self.lease_s
        )
        report = BatchReport(claimed=len(batch))
        if not batch:
            return report
        per_sink: list[list[Outcome]] = []
        try:
            for sink in self.sinks:
                per_sink.append(await sink.publish(batch))
        except SinkUnavailableError as exc:
            # Nothing of the batch reached that sink: unlease it untried and back off.
            self._unavailable_streak += 1
            await self._settle_or_keep([], [], [e.sequence for e in batch], batch)
            report.released = len(batch)
            report.unavailable = str(exc)
            self.stats.record(latencies_ms=[], failed=0, dead=0, unavailable=True)
            return report
        self._unavailable_streak = 0
        published, failed, released = split(batch, combine(per_sink, len(batch)))
        report.dead = await self._settle_or_keep(published, failed, released, batch)
        report.published, report.failed, report.released = len(published), len(failed), len(released)
        report.latencies_ms = [max(0.0, (at - e.occurred_at).total_seconds() * 1000.0) for e, at in published]
        self.stats.record(
            latencies_ms=report.latencies_ms, failed=len(failed), dead=report.dead, unavailable=False
        )
        return report

    async def _settle_or_keep(
        self,
        published: list[tuple[Claimed, datetime]],
        failed: list[Failure],
        released: list[int],
        batch: Sequence[Claimed],
    ) -> int:
        try:
            return await asyncio.to_thread(self._settle, published, failed, released, batch)
        except DatabaseUnavailableError:
            self._unsettled = (published, failed, released, batch)
            raise

    def _settle(
        self,
        published: list[tuple[Claimed, datetime]],
        failed: list[Failure],
        released: list[int],
        batch: Sequence[Claimed],
    ) -> int:
        hook = None
        if self.on_published is not None and published:
            done = [event for event, _ in published]
            on_published = self.on_published

            def hook(session: Session) -> None:
                on_published(session, done)

        return store.settle(
            self.engine,
            self.relay_id,
            published=[(e.sequence, at) for e, at in published],
            failed=failed,
            released=released,
            attempts={e.sequence: e.attempts for e in batch},
            policy=self.policy,
            in_transaction=hook,
        )

    def backoff_s(self) -> float:
        """How long to wait before reconnecting to a sink that was unreachable."""
        if not self._unavailable_streak:
            return 0.0
        return min(self.reconnect_max_s, self.policy.delay(self._unavailable_streak))

    async def run(
        self,
        stop: asyncio.Event,
        *,
        once: bool = False,
        idle_s: float = 0.2,
        progress: Callable[[BatchReport], None] | None = None,
        between: Callable[[], object] | None = None,
    ) -> BatchReport:
        """Step until ``stop`` is set (or, with ``once``, until nothing is due); totals returned.

        ``between`` runs after every step (the workflow dispatcher). With ``once``, an unreachable
        sink or database ends the run (the caller reports it); otherwise the relay backs off and
        tries again, so a broker or database restart does not stop it.
        """
        total = BatchReport()
        try:
            while not stop.is_set():
                try:
                    report = await self.step()
                except DatabaseUnavailableError as exc:
                    # The outbox is out of reach: nothing was settled, leases run out on their own.
                    if once:
                        raise
                    self._unavailable_streak += 1
                    report = BatchReport(unavailable=str(exc))
                total.claimed += report.claimed
                total.published += report.published
                total.failed += report.failed
                total.dead += report.dead
                total.released += report.released
                total.unavailable = report.unavailable
                if progress is not None and report.claimed:
                    progress(report)
                if between is not None:
                    try:
                        result = between()
                        if asyncio.iscoroutine(result):
                            await result
                    except DatabaseUnavailableError:
                        if once:
                            raise
                if once and (report.claimed == 0 or report.unavailable):
                    break
                pause = self.backoff_s() if report.unavailable else (0.0 if report.claimed else idle_s)
                if pause:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=pause)
        finally:
            for sink in self.sinks:
                await sink.close()
        return total
