"""Blocks and resolutions reach every worker promptly, not only at the next context refresh.

A block is raised in the memory of the worker whose detector fired (``SecurityMonitor``) and
written to ``security_anomalies`` by its recorder; a resolution is written by the CLI or the API
of any worker. Both bump ``security_generation`` in the same transaction
(``schema.security_generation``). Each worker runs one ``BlockSync`` thread that

- checks that counter every ``ACCUTE_SECURITY_CHANGE_POLL_S`` (0.5 s: one primary-key read, off
  the request path), and with ``ACCUTE_REDIS_URL`` is also woken at once by a message on
  ``ACCUTE_SECURITY_CHANGE_CHANNEL`` (published after the commit by the recorder, the API and the
  CLI; pub/sub may drop a message, the counter never misses one);
- when the counter moved: puts the table's live address/token blocks on the detector's in-memory
  blocklist (enforced before the token is even checked), lifts those whose anomaly was resolved
  after the block began, and reloads the zero-trust context (user/organization blocks).

Nothing here runs on the request path: the chat route's cost is unchanged.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from schema import security_anomalies, security_generation
from schema.config import Settings
from schema.db import transaction
from schema.timeutil import utcnow

if TYPE_CHECKING:
    from orchestrator.security.anomalies import SecurityMonitor
    from orchestrator.security.gate import SecurityGate

log = logging.getLogger("accute.security")
#: Resolutions this much older than the last sync are looked at again (clock differences between
#: the writer and this worker); lifting a block twice is harmless.
RESOLVED_MARGIN = timedelta(seconds=60)
PREFIXES = ("address:", "principal:")


def publish(settings: Settings) -> bool:
    """Tell the other workers that blocks changed (a no-op without ``ACCUTE_REDIS_URL``).

    Never raises: the counter in the table is the guarantee, the message only makes it faster.
    """
    if not settings.redis_url:
        return False
    try:
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.publish(settings.security_change_channel, "blocks")
        finally:
            client.close()
    except Exception as exc:
        log.warning(
            "publishing a security change failed (%s); workers pick it up by polling", type(exc).__name__
        )
        return False
    return True


class BlockSync:
    """One per worker: keeps the blocklist and the zero-trust context in step with the table."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        monitor: SecurityMonitor | None,
        gate: SecurityGate | None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.monitor = monitor
        self.gate = gate
        self.seen: int | None = None
        self.syncs = 0
        self._since: datetime = utcnow()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            with transaction(self.engine) as session:
                self.seen = security_generation.current(session)
        except Exception as exc:  # the poller retries; /readyz reports the database
            log.warning("security generation unreadable at start (%s)", type(exc).__name__)
        if self.monitor is not None and self.monitor.recorder is not None:
            self.monitor.recorder.on_written = self._written
        self._spawn(self._poll, "accute-block-sync")
        if self.settings.redis_url:
            self._spawn(self._listen, "accute-block-listen")

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(5)

    # -- signals --------------------------------------------------------------------------------------
    def changed(self) -> None:
        """This worker changed blocks (committed): sync here now, and tell the others."""
        self._wake.set()
        publish(self.settings)

    def _written(self, blocked: bool) -> None:
        if blocked:
            self.changed()

    # -- the threads ----------------------------------------------------------------------------------
    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.security_change_poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception as exc:  # keep the last good state; try again next time
                log.warning("security block sync failed (%s)", type(exc).__name__)

    def _listen(self) -> None:
        import redis

        assert self.settings.redis_url is not None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=2)
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.settings.security_change_channel)
                self._wake.set()  # (re)subscribed: whatever was missed meanwhile, the counter says
                backoff = 0.5
                try:
                    while not self._stop.is_set():
                        if pubsub.get_message(timeout=0.5) is not None:
                            self._wake.set()
                finally:
                    pubsub.close()
                    client.close()
            except Exception as exc:
                log.warning("security change channel lost (%s); polling meanwhile", type(exc).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    # -- the work -------------------------------------------------------------------------------------
    def sync(self, force: bool = False) -> bool:
        """Reload blocks if the counter moved (or ``force``); True when it did."""
        started = utcnow()
        with transaction(self.engine) as session:
            generation = security_generation.current(session)
            if generation == self.seen and not force:
                return False
            live = security_anomalies.live_blocks(session, PREFIXES) if self.monitor is not None else {}
            resolved = (
                security_generation.resolved_subjects(session, self._since - RESOLVED_MARGIN)
                if self.monitor is not None
                else {}
            )
        if self.monitor is not None:
            blocks = self.monitor.blocks
            for subject, until in live.items():
                blocks.block(subject, until.timestamp(), since=0.0)
            for subject, when in resolved.items():
                if subject not in live:
                    blocks.unblock_before(subject, when.timestamp())
        if self.gate is not None:
            self.gate.reload_context()
        self.seen, self._since = generation, started
        self.syncs += 1
        return True
