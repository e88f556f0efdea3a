"""Batched writes of zero-trust decisions to ``zero_trust_access_log``, off the request path.

A request puts its decision on a bounded queue (a lock and an append; it never waits for the
database) and goes on. One writer thread takes what has queued and inserts it in one statement
per batch, on a connection it keeps checked out: every ``flush_ms`` milliseconds (default 1 s:
larger batches cost less CPU per row), or at once when ``batch`` rows are waiting. ``close``
writes what is left.

When the queue is full (the database is slower than the traffic for longer than the queue lasts)
a decision is dropped and counted (``dropped``, one warning per thousand) rather than slowing or
failing the request: the access log is evidence, the answer to the request does not depend on it.
A batch that fails is logged and dropped the same way (the thread keeps going).

Rows without a user or organization: ``user_id`` and ``organization_id`` are NOT NULL in the spec.
A token whose subject is not a user row is logged under ``uuid5(NAMESPACE_URL, "accute:subject:" +
sub)`` (stable per subject); a platform admin's token without an organization under the nil UUID.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, insert

from orchestrator.security.zero_trust import Decision, Factors
from schema.models import ZeroTrustAccessLog
from schema.timeutil import utcnow

log = logging.getLogger("accute.security")
NIL = uuid.UUID(int=0)


def subject_user(subject: str) -> uuid.UUID:
    """The ``user_id`` logged for a token subject that names no user row."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"accute:subject:{subject}")


@dataclass(frozen=True, slots=True)
class Entry:
    organization_id: uuid.UUID | None
    user_id: uuid.UUID | None
    subject: str
    device_id: uuid.UUID | None
    resource: str
    decision: Decision
    factors: Factors
    address: str | None
    at: Any
    challenge_passed: bool | None = None
    """Set when the request answered a challenge (``X-Accute-Challenge-Response``)."""
    step_up: bool = False
    """The challenge passed because the token answered one recently (``step_up.StepUps``)."""


def _row(entry: Entry) -> dict[str, Any]:
    factors = entry.factors.as_json()
    factors["address"] = entry.address
    factors["reasons"] = list(entry.decision.reasons)
    if entry.step_up:
        factors["step_up"] = True
    if entry.user_id is None:
        factors["subject"] = entry.subject
    return {
        "id": uuid.uuid4(),
        "organization_id": entry.organization_id or NIL,
        "user_id": entry.user_id or subject_user(entry.subject),
        "device_id": entry.device_id,
        "resource_requested": entry.resource[:500],
        "access_decision": entry.decision.outcome,
        "trust_score": Decimal(str(round(entry.decision.trust_score, 2))),
        "factors_evaluated": factors,
        "challenge_type": entry.decision.challenge_type,
        "challenge_passed": entry.challenge_passed,
        "created_at": entry.at,
    }


class AccessLogWriter:
    """Batches decisions into ``zero_trust_access_log`` off the request path.

    ``record`` appends to a deque (atomic under the GIL) and wakes the writer thread only when a
    batch is full; otherwise the thread drains on its own every ``flush_ms``. A ``queue.Queue``
    put woke the waiting thread on every request (a lock release and a thread switch each),
    about half of what the gate added to a streamed first token (BENCHMARKS.md, issue 15).
    """

    def __init__(
        self, engine: Engine, flush_ms: int = 1000, batch: int = 500, capacity: int = 50_000
    ) -> None:
        self.engine = engine
        self.flush_s = flush_ms / 1000
        self.batch = batch
        self.capacity = capacity
        self._entries: deque[Entry] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        self.written = 0
        self.on_flush: Callable[[int], None] | None = None
        self._connection: Connection | None = None

    def record(self, entry: Entry) -> None:
        """Queue ``entry`` (never blocks; drops and counts when ``capacity`` entries wait)."""
        if self._thread is None:
            self._start()
        waiting = len(self._entries)
        if waiting >= self.capacity:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("zero-trust access log queue full: %d decisions dropped so far", self.dropped)
            return
        self._entries.append(entry)
        if waiting + 1 == self.batch:
            self._wake.set()

    def entry(self, **fields: Any) -> Entry:
        return Entry(at=utcnow(), **fields)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="accute-access-log", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join(timeout)
        self._drop_connection()

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # a broken connection: the pool discards it
                log.debug("closing the access-log connection failed", exc_info=True)

    def _drain(self) -> list[Entry]:
        taken: list[Entry] = []
        while self._entries and len(taken) < self.batch:
            taken.append(self._entries.popleft())
        return taken

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            stop = self._closed
            while True:
                pending = self._drain()
                if not pending:
                    break
                self._write(pending)
            if stop:
                return

    def _write(self, entries: list[Entry]) -> None:
        try:
            rows = [_row(e) for e in entries]
            if self._connection is None:  # kept checked out: no pool checkout or pre-ping per batch
                self._connection = self.engine.connect()
            with self._connection.begin():
                self._connection.execute(insert(ZeroTrustAccessLog), rows)
            self.written += len(rows)
            if self.on_flush is not None:
                self.on_flush(len(rows))
        except Exception as exc:
            self._drop_connection()  # it may be broken; the next batch checks out a fresh one
            self.dropped += len(entries)
            log.error("zero-trust access log: a batch of %d failed (%s)", len(entries), type(exc).__name__)
