"""``accute.llm.fallback.billed``: a tenant's billed fallback usage, aggregated, never one per request.

The chat path writes its billing in the accounting group commit (``orchestrator.writer`` →
``accounting.record_batch``). After a batch has charged fallback requests, ``after_batch`` appends,
in that batch's transaction, one event per charged organization whose (organization, billing
period) was not reported by this process in the last ``hub_fallback_billed_interval_s`` seconds.
The event carries the ``fallback_billing`` row's cumulative figures, read back in the same
transaction, so a consumer keeps the latest per (organization, period) and a skipped, lost or
repeated event changes nothing.

Cost on the hot path: nothing for a batch without fallback charges beyond a dict check; for a
batch with charges, one SELECT and one INSERT per organization that is due (at most one per
organization per interval), none otherwise.

Trailing figures: a charge inside the interval is remembered as due; the first accounting batch
after the interval (any request of any tenant) reports it. A process that stops before that leaves
the last minutes of figures to the next report of that organization and period (the next charge
after a restart reports at once, with cumulative figures); a period's last charges before the
process stopped for good are in ``fallback_billing`` and ``accute-fl billing``, not in an event.
The throttle is per process: N serving processes report up to N events per interval.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import date

from sqlalchemy import Connection, select

from schema import events
from schema.config import Settings
from schema.models import FallbackBilling

EVENT_TYPE = "accute.llm.fallback.billed"


class FallbackBilledReporter:
    """Per-process throttle of the billing events (monotonic clock; thread-safe)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._last: dict[tuple[uuid.UUID, date], float] = {}
        self._due: dict[tuple[uuid.UUID, date, date], float] = {}
        """Charged but not reported yet: (organization, period) -> when it may be reported."""

    def has_due(self) -> bool:
        """Whether a charge waits to be reported (a lock-free peek for the hot path)."""
        return bool(self._due)

    def reset(self) -> None:
        with self._lock:
            self._last.clear()
            self._due.clear()

    def after_batch(
        self,
        connection: Connection,
        settings: Settings,
        charged: Iterable[uuid.UUID],
        period: tuple[date, date],
    ) -> int:
        """Append the events that are due, in the batch's transaction; returns how many."""
        interval = settings.hub_fallback_billed_interval_s
        now = self._clock()
        start, end = period
        with self._lock:
            for org in charged:
                self._due.setdefault((org, start, end), self._last.get((org, start), -1e18) + interval)
            if not self._due:
                return 0
            ready = sorted(
                (key for key, at in self._due.items() if at <= now), key=lambda k: (str(k[0]), k[1])
            )
            for key in ready:
                del self._due[key]
                self._last[(key[0], key[1])] = now
        for org, first, last in ready:
            self._append(connection, org, first, last)
        return len(ready)

    @staticmethod
    def _append(connection: Connection, organization_id: uuid.UUID, start: date, end: date) -> None:
        table = FallbackBilling.__table__
        row = connection.execute(
            select(
                table.c.id,
                table.c.billing_model,
                table.c.total_fallback_requests,
                table.c.total_fallback_tokens,
                table.c.total_cost_usd,
            ).where(
                table.c.organization_id == organization_id,
                table.c.billing_period_start == start,
                table.c.billing_period_end == end,
            )
        ).one_or_none()
        if row is None:  # nothing billed in that period (cannot happen after a charge; stay quiet)
            return
        events.append_on(
            connection,
            event_type=EVENT_TYPE,
            organization_id=organization_id,
            payload={
                "billing_id": row.id,
                "billing_period_start": start,
                "billing_period_end": end,
                "billing_model": row.billing_model,
                "total_fallback_requests": row.total_fallback_requests,
                "total_fallback_tokens": row.total_fallback_tokens,
                "total_cost_usd": row.total_cost_usd,
            },
        )


#: The process's reporter, used by ``accounting.record_batch``.
REPORTER = FallbackBilledReporter()
