"""Group commit of the cascade's accounting: one writer thread, one transaction per batch.

Each chat request hands its ``Outcome`` (and the circuit states it observed) to ``write`` and
waits until the transaction that holds it has committed; only then does the request answer, so
durability is what it was with one transaction per request. The writer thread takes whatever has
queued up while the previous transaction ran (at most ``max_batch``) and writes it with
``accounting.record_batch`` on a connection it keeps checked out (no pool checkout, no pre-ping
per batch), then wakes each waiting request with its own result:

- written: ``write`` returns;
- the request id was already accounted for (in an earlier transaction, or earlier in the same
  batch): ``write`` raises ``DuplicateRequest`` after the batch committed, so the caller can read
  the stored answer;
- the batch transaction failed (a bad row, a deadlock, a lost connection): it was rolled back as a
  whole, and each of its outcomes is written again in its own transaction on a freshly checked-out
  connection; the ones that succeed answer normally, the ones that fail raise their own error
  (``DatabaseUnavailableError`` for connection problems). No request answers success unless its
  rows committed, and no request loses its rows to another request's error.

A request cancelled while it waits (the client went away) is still written. ``close`` writes what
is queued, then stops the thread and returns its connection.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from orchestrator import accounting
from orchestrator.accounting import DuplicateRequest, Outcome
from schema.config import Settings
from schema.db import transaction

log = logging.getLogger("accute.orchestrator")

MAX_BATCH = 256


@dataclass
class _Item:
    outcome: Outcome
    health: Mapping[uuid.UUID, str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    result: BaseException | None = field(default=None)


class AccountingWriter:
    def __init__(self, engine: Engine, settings: Settings, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.settings = settings
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.batches = 0
        """Transactions committed or attempted (for tests and the benchmark)."""

    # -- the request side --------------------------------------------------------------------------
    async def write(self, outcome: Outcome, health: Mapping[uuid.UUID, str] | None = None) -> None:
        """Return once ``outcome`` is committed; ``DuplicateRequest`` if its id was already accounted for."""
        loop = asyncio.get_running_loop()
        item = _Item(outcome, dict(health or {}), loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise RuntimeError("the accounting writer is closed")
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="accute-accounting", daemon=True)
                self._thread.start()
            self._queue.put(item)
        await item.future

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the thread and return the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
        else:
            self._drop_connection()

    # -- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._write(batch)
        finally:
            self._drop_connection()

    def _write(self, batch: list[_Item]) -> None:
        self.batches += 1
        try:
            try:
                written = self._write_batch(batch)
            except Exception as exc:
                log.warning(
                    "accounting batch of %d failed (%s); writing each request on its own",
                    len(batch),
                    type(exc).__name__,
                )
                for item in batch:
                    item.result = self._write_one(item)
            else:
                for item, ok in zip(batch, written, strict=True):
                    item.result = None if ok else DuplicateRequest(item.outcome.request_id)
        except BaseException as exc:  # never leave a request waiting: it fails with the error
            for item in batch:
                item.result = item.result or exc
            raise
        finally:
            self._wake(batch)

    def _write_batch(self, batch: list[_Item]) -> list[bool]:
        if self._connection is None:
            self._connection = self.engine.connect()
        connection = self._connection
        health: dict[uuid.UUID, str] = {}
        for item in batch:
            health.update(item.health)
        try:
            with connection.begin():
                written = accounting.record_batch(connection, self.settings, [i.outcome for i in batch])
                accounting.write_health(connection, health)
        except Exception:
            self._drop_connection()  # it may be broken; the next batch checks out a fresh one
            raise
        return written

    def _write_one(self, item: _Item) -> BaseException | None:
        """The item in its own transaction; a lost database becomes ``DatabaseUnavailableError``."""
        try:
            with transaction(self.engine) as session:
                accounting.record(session, self.settings, item.outcome)
                accounting.write_health(session.connection(), item.health)
        except DuplicateRequest as exc:
            return exc
        except Exception as exc:
            log.error("accounting of one request failed: %s", type(exc).__name__)
            return exc
        return None

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # a broken connection: the pool discards it
                log.debug("closing the accounting connection failed", exc_info=True)

    @staticmethod
    def _wake(batch: list[_Item]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                continue


def _settle(items: list[_Item]) -> None:
    for item in items:
        if item.future.done():
            continue
        if item.result is None:
            item.future.set_result(None)
        else:
            item.future.set_exception(item.result)
