"""The relay against the real RabbitMQ on loopback: delivery, outage, a killed relay, two relays."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator.hub import store
from orchestrator.hub.amqp import AmqpSink
from orchestrator.hub.backoff import RetryPolicy
from orchestrator.hub.metrics import hub_metrics
from orchestrator.hub.relay import BatchReport, Relay
from schema.db import make_engine, transaction
from schema.models.hub import HubOutbox
from tests.orchestrator.hub.support import (
    RABBIT_URL,
    Consumer,
    TcpProxy,
    append_events,
    first_seen,
    in_order_per_tenant,
    require_rabbitmq,
    statuses,
)

ROOT = Path(__file__).resolve().parents[3]
FAST = RetryPolicy(max_attempts=50, initial_s=0.05, max_s=0.5, jitter_s=0.05)


@pytest.fixture
def exchange() -> str:
    require_rabbitmq()
    return f"test.accute.{uuid.uuid4().hex[:12]}"


def relay_for(engine: Engine, url: str, exchange: str, **kw: object) -> Relay:
    return Relay(engine, [AmqpSink(url, exchange, timeout_s=3, confirm_timeout_s=3)], policy=FAST, **kw)  # type: ignore[arg-type]


def test_pending_events_arrive_once_each_in_tenant_order(engine: Engine, exchange: str) -> None:
    # Prepare
    tenants = [uuid.uuid4() for _ in range(3)]
    ids = append_events(engine, tenants, per_tenant=20)

    with Consumer(exchange) as consumer:
        # Execute
        total = asyncio.run(
            relay_for(engine, RABBIT_URL, exchange, batch_size=25).run(asyncio.Event(), once=True)
        )
        received = consumer.wait_for(len(ids))

    # Assert
    assert total.published == len(ids) and total.failed == 0
    assert sorted(m.event_id for m in received) == sorted(str(i) for i in ids)  # each exactly once
    assert in_order_per_tenant(received)
    assert all(m.persistent and m.routing_key == "accute.consent.granted" for m in received)
    first = received[0].body
    assert first["source"] == "accute" and first["event_id"] == received[0].event_id
    assert set(first) >= {
        "event_type",
        "tenant_id",
        "payload",
        "correlation_id",
        "timestamp",
        "schema_version",
    }
    assert statuses(engine) == {"published": len(ids)}
    with transaction(engine) as session:
        numbers = store.status(session)
    assert numbers["pending"] == 0 and numbers["published_total"] == len(ids)
    assert numbers["latency_ms_p50"] is not None and numbers["latency_ms_p99"] >= numbers["latency_ms_p50"]
    with transaction(engine) as session:
        gauges = hub_metrics(session)
    assert gauges["accute_hub_outbox_pending"] == 0 and gauges["accute_hub_outbox_dead"] == 0
    assert gauges["accute_hub_publish_latency_p99_seconds"] == numbers["latency_ms_p99"] / 1000
    assert gauges["accute_hub_relay_published_total"] >= len(ids)  # this process's relays


def test_broker_outage_loses_nothing_and_keeps_tenant_order(engine: Engine, exchange: str) -> None:
    # Prepare: the relay reaches the broker through a proxy the test controls.
    tenants = [uuid.uuid4() for _ in range(3)]
    produced: list[uuid.UUID] = []

    with TcpProxy() as proxy, Consumer(exchange) as consumer:
        relay = relay_for(engine, proxy.url, exchange, batch_size=10)
        relay.reconnect_max_s = 0.3

        async def scenario() -> None:
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop, idle_s=0.05))
            produced.extend(await asyncio.to_thread(append_events, engine, tenants, 10, 0))
            await asyncio.sleep(1.0)
            # Execute: cut the broker off while events keep coming, then restore it.
            proxy.cut()
            for start in range(10, 40, 5):
                produced.extend(await asyncio.to_thread(append_events, engine, tenants, 5, start))
                await asyncio.sleep(0.1)
            during = await asyncio.to_thread(statuses, engine)
            proxy.restore()
            produced.extend(await asyncio.to_thread(append_events, engine, tenants, 10, 40))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (await asyncio.to_thread(statuses, engine)).get("pending"):
                await asyncio.sleep(0.1)
            stop.set()
            await running
            assert during.get("pending", 0) > 0  # the outage really held events back

        asyncio.run(scenario())
        received = consumer.wait_for(len(produced))

    # Assert
    kept = first_seen(received)
    assert sorted(m.event_id for m in kept) == sorted(str(i) for i in produced)  # all, none twice after dedup
    assert in_order_per_tenant(kept)
    assert statuses(engine) == {"published": len(produced)}  # an outage is not a failure: nothing dead


def _relay_process(url: str, amqp: str, exchange: str, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")} | {
        "PYTHONPATH": str(ROOT),
        "ACCUTE_DATABASE_URL": url,
        "ACCUTE_HUB_AMQP_URL": amqp,
        "ACCUTE_HUB_EXCHANGE": exchange,
        "ACCUTE_HUB_BATCH_SIZE": "40",
        "ACCUTE_HUB_LEASE_S": "2",
        "ACCUTE_HUB_TIMEOUT_S": "30",
        "ACCUTE_HUB_POLL_S": "0.05",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "hub", "relay", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _leased_to_others(engine: Engine) -> set[int]:
    with transaction(engine) as session:
        return set(
            session.scalars(
                select(HubOutbox.sequence).where(
                    HubOutbox.status == "pending", HubOutbox.claimed_by.is_not(None)
                )
            )
        )


def test_a_relay_killed_mid_batch_loses_nothing(engine: Engine, exchange: str) -> None:
    # Prepare: 200 events; the proxy will hold back the broker's confirms of one batch.
    tenants = [uuid.uuid4() for _ in range(4)]
    ids = append_events(engine, tenants, per_tenant=50)
    url = engine.url.render_as_string(hide_password=False)

    with TcpProxy() as proxy, Consumer(exchange) as consumer:
        first = _relay_process(url, proxy.url, exchange)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and statuses(engine).get("published", 0) < 40:
                time.sleep(0.02)
            proxy.hold()  # the broker gets the next batch; its confirms never reach the relay
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not _leased_to_others(engine):
                time.sleep(0.02)
            time.sleep(0.5)
            in_flight = _leased_to_others(engine)

            # Execute: SIGKILL mid-batch, then a second relay after the lease ran out.
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        proxy.release()
        time.sleep(2.2)
        second = _relay_process(url, RABBIT_URL, exchange, "--once")
        _, err = second.communicate(timeout=120)
        received = consumer.wait_for(len(ids))

    # Assert
    assert second.returncode == 0, err
    assert in_flight, "the relay was not killed mid-batch"
    assert statuses(engine) == {"published": len(ids)}
    kept = first_seen(received)
    assert sorted(m.event_id for m in kept) == sorted(str(i) for i in ids)
    assert in_order_per_tenant(kept)
    twice = {m.sequence for m in received if Counter(x.event_id for x in received)[m.event_id] > 1}
    assert twice <= in_flight  # duplicates only of the batch whose confirms were lost


@pytest.mark.postgres
def test_two_relays_on_postgresql_never_publish_a_row_twice(pg_engine: Engine, exchange: str) -> None:
    # Prepare: many tenants, so that two relays' batches can hold different tenants' heads.
    tenants = [uuid.uuid4() for _ in range(30)]
    ids = append_events(pg_engine, tenants, per_tenant=12)
    other = make_engine(pg_engine.url.render_as_string(hide_password=False))
    published: dict[str, int] = {"relay-a": 0, "relay-b": 0}

    with Consumer(exchange) as consumer:

        async def both() -> None:
            relays = [
                relay_for(pg_engine, RABBIT_URL, exchange, batch_size=15, relay_id="relay-a"),
                relay_for(other, RABBIT_URL, exchange, batch_size=15, relay_id="relay-b"),
            ]
            stop = asyncio.Event()

            def count(relay: Relay) -> Callable[[BatchReport], None]:
                def progress(report: BatchReport) -> None:
                    published[relay.relay_id] += report.published

                return progress

            running = [asyncio.create_task(r.run(stop, idle_s=0.02, progress=count(r))) for r in relays]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (await asyncio.to_thread(statuses, pg_engine)).get(
                "pending"
            ):
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*running)

        # Execute
        asyncio.run(both())
        received = consumer.wait_for(len(ids))
    other.dispose()

    # Assert
    assert statuses(pg_engine) == {"published": len(ids)}
    assert sorted(m.event_id for m in received) == sorted(str(i) for i in ids)  # no event twice
    assert published["relay-a"] > 0 and published["relay-b"] > 0  # both relays really worked
    assert published["relay-a"] + published["relay-b"] == len(ids)
    assert in_order_per_tenant(received)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_relay_stops_cleanly_on_sigterm_and_sigint(engine: Engine, exchange: str, signum: int) -> None:
    # Prepare: a running relay that has published what was pending.
    ids = append_events(engine, [uuid.uuid4()], per_tenant=5)
    url = engine.url.render_as_string(hide_password=False)
    with Consumer(exchange) as consumer:
        relay = _relay_process(url, RABBIT_URL, exchange)
        try:
            consumer.wait_for(len(ids))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and statuses(engine).get("pending"):
                time.sleep(0.05)

            # Execute
            relay.send_signal(signum)
            _, err = relay.communicate(timeout=30)
        finally:
            if relay.poll() is None:
                relay.kill()

    # Assert: exit 0 after the current step, a last line with the totals, nothing left leased.
    assert relay.returncode == 0, err
    assert f"stopped; published {len(ids)}" in err
    assert statuses(engine) == {"published": len(ids)}
    assert not _leased_to_others(engine)


@pytest.mark.postgres
def test_the_relay_rides_out_a_database_outage(pg_engine: Engine, exchange: str) -> None:
    # Prepare: the relay reaches PostgreSQL through a proxy the test cuts; producers do not.
    tenant = uuid.uuid4()
    before = append_events(pg_engine, [tenant], per_tenant=5)
    after: list[uuid.UUID] = []
    url = pg_engine.url
    with (
        TcpProxy(target=(url.host or "127.0.0.1", url.port or 5432)) as proxy,
        Consumer(exchange) as consumer,
    ):
        through_proxy = make_engine(url.set(port=proxy.port).render_as_string(hide_password=False))
        relay = relay_for(through_proxy, RABBIT_URL, exchange, batch_size=10, lease_s=2.0)
        relay.reconnect_max_s = 0.3

        async def scenario() -> None:
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop, idle_s=0.05))
            await asyncio.to_thread(consumer.wait_for, len(before))
            # Execute: cut the database off, commit more events directly, restore.
            proxy.cut()
            after.extend(await asyncio.to_thread(append_events, pg_engine, [tenant], 5, 5))
            await asyncio.sleep(1.0)
            survived = not running.done()
            proxy.restore()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (await asyncio.to_thread(statuses, pg_engine)).get(
                "pending"
            ):
                await asyncio.sleep(0.1)
            stop.set()
            await running
            assert survived

        asyncio.run(scenario())
        received = consumer.wait_for(len(before) + len(after))
        through_proxy.dispose()

    # Assert
    kept = first_seen(received)
    assert sorted(m.event_id for m in kept) == sorted(str(i) for i in before + after)
    assert in_order_per_tenant(kept)
    assert statuses(pg_engine) == {"published": 10}
