"""The access-log writer: decisions reach the table in batches, off the request path, and none is
lost at close; a full queue drops and counts instead of blocking the request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, func, select

from orchestrator.security.access_log import AccessLogWriter
from orchestrator.security.zero_trust import Decision, Factors
from schema.db import transaction
from schema.models import ZeroTrustAccessLog


def _rows(engine: Engine) -> int:
    with transaction(engine) as session:
        return int(session.scalar(select(func.count()).select_from(ZeroTrustAccessLog)) or 0)


def _record(writer: AccessLogWriter, n: int) -> None:
    for i in range(n):
        writer.record(
            writer.entry(
                organization_id=uuid.uuid4(),
                user_id=None,
                subject=f"svc-{i}",
                device_id=None,
                resource="GET /v1/x",
                decision=Decision("allow", 100.0),
                factors=Factors(),
                address="127.0.0.1",
            )
        )


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_a_full_batch_is_written_at_once_and_close_writes_the_rest(engine: Engine) -> None:
    # Prepare: a flush interval far longer than the test, so only a full batch or close writes.
    writer = AccessLogWriter(engine, flush_ms=600_000, batch=4)

    # Execute / Assert: 3 decisions wait; the 4th fills the batch and wakes the writer.
    _record(writer, 3)
    time.sleep(0.3)
    assert _rows(engine) == 0
    _record(writer, 1)
    assert _eventually(lambda: _rows(engine) == 4)
    _record(writer, 2)
    writer.close()
    assert _rows(engine) == 6 and writer.written == 6 and writer.dropped == 0


def test_the_interval_writes_a_partial_batch(engine: Engine) -> None:
    writer = AccessLogWriter(engine, flush_ms=50, batch=500)

    _record(writer, 7)

    assert _eventually(lambda: _rows(engine) == 7)
    writer.close()


def test_a_full_queue_drops_and_counts(engine: Engine) -> None:
    # Prepare: room for 5 waiting decisions, never flushed on its own.
    writer = AccessLogWriter(engine, flush_ms=600_000, batch=1000, capacity=5)

    # Execute
    _record(writer, 8)
    writer.close()

    # Assert
    assert writer.dropped == 3 and _rows(engine) == 5
