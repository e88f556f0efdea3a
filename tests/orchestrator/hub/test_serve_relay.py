"""``serve`` runs the relay in its lifespan when a hub is configured, and not otherwise."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine

from tests.orchestrator.conftest import Service
from tests.orchestrator.hub.support import RABBIT_URL, Consumer, append_events, require_rabbitmq, statuses


def test_the_service_publishes_the_outbox_while_it_runs(
    engine: Engine, service_factory: Callable[..., Service]
) -> None:
    # Prepare
    require_rabbitmq()
    exchange = f"test.accute.{uuid.uuid4().hex[:12]}"
    with Consumer(exchange) as consumer:
        service_factory(hub_amqp_url=RABBIT_URL, hub_exchange=exchange, hub_poll_s=0.05)

        # Execute: events committed while the service runs.
        ids = append_events(engine, [uuid.uuid4()], per_tenant=5)
        received = consumer.wait_for(len(ids), timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and statuses(engine).get("pending"):
            time.sleep(0.05)

    # Assert
    assert sorted(m.event_id for m in received) == sorted(str(i) for i in ids)
    assert statuses(engine) == {"published": len(ids)}


def test_without_a_hub_events_stay_in_the_outbox(
    engine: Engine, service_factory: Callable[..., Service]
) -> None:
    # Prepare
    service = service_factory()

    # Execute
    ids = append_events(engine, [uuid.uuid4()], per_tenant=2)
    time.sleep(0.5)
    health = service.client.get("/healthz")

    # Assert: nothing fails, nothing leaves.
    assert health.status_code == 200
    assert statuses(engine) == {"pending": len(ids)}
