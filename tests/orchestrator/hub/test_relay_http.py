"""The relay and the workflow dispatcher against a fake hub on loopback (real HTTP)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from sqlalchemy import Engine, select, update

from orchestrator.hub import store
from orchestrator.hub.backoff import RetryPolicy
from orchestrator.hub.client import HubClient
from orchestrator.hub.http_sink import HttpSink
from orchestrator.hub.relay import Relay
from orchestrator.hub.workflows import dispatch, parse, record
from schema.db import transaction
from schema.models.hub import HubOutbox
from schema.models.hub_workflows import HubWorkflowExecution
from schema.timeutil import utcnow
from tests.orchestrator.hub.fake_hub import FakeHub
from tests.orchestrator.hub.support import append_events, statuses

TOKEN = "svc-token-0123456789"
POLICY = RetryPolicy(max_attempts=6, initial_s=0.1, max_s=0.3, jitter_s=0.05)


def http_relay(engine: Engine, hub: FakeHub, **kw: object) -> Relay:
    client = HubClient(hub.url, TOKEN, timeout_s=0.5)
    return Relay(engine, [HttpSink(client)], policy=POLICY, **kw)  # type: ignore[arg-type]


async def run_until_settled(relay: Relay, engine: Engine, timeout: float = 30.0) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop, idle_s=0.05))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (await asyncio.to_thread(statuses, engine)).get("pending"):
        await asyncio.sleep(0.05)
    stop.set()
    await running


def test_hub_answering_500_429_and_hanging_gets_the_event_in_the_end(engine: Engine) -> None:
    # Prepare: one tenant, three events; the hub fails the first event three ways before a 200.
    tenant = uuid.uuid4()
    ids = append_events(engine, [tenant], per_tenant=3)

    with FakeHub(script={"/events": ["500", "429:1", "hang:2"]}) as hub:
        # Execute
        asyncio.run(run_until_settled(http_relay(engine, hub), engine))
        seen = hub.requests("/events")

    # Assert: four tries of the first event, then the others, each once, in order.
    event_ids = [s.body["event_id"] for s in seen]
    assert event_ids[:4] == [str(ids[0])] * 4
    assert event_ids[4:] == [str(i) for i in ids[1:]]
    assert [s.answered for s in seen[:4]] == ["500", "429:1", "hang:2", "200"]
    assert seen[2].at - seen[1].at >= 0.95  # Retry-After: 1 was honoured
    assert all(s.headers["authorization"] == f"Bearer {TOKEN}" for s in seen)
    assert all(s.headers["idempotency-key"] == s.body["event_id"] for s in seen)
    assert statuses(engine) == {"published": 3}


def test_events_go_dead_after_the_policy_and_come_back_on_replay(engine: Engine) -> None:
    # Prepare: a hub that fails everything for a while.
    tenant = uuid.uuid4()
    ids = append_events(engine, [tenant], per_tenant=2)
    policy = RetryPolicy(max_attempts=2, initial_s=0.05, max_s=0.1, jitter_s=0.01)

    with FakeHub(script={"/events": ["500"] * 2}) as hub:
        relay = http_relay(engine, hub)
        relay.policy = policy
        asyncio.run(run_until_settled(relay, engine, timeout=5))
        with transaction(engine) as session:
            dead = store.list_dead(session)
        # Execute: replay the dead letter; the hub now answers 200.
        with transaction(engine) as session:
            store.replay(session, dead[0]["event_id"])
        asyncio.run(run_until_settled(http_relay(engine, hub), engine))
        seen = [s.body["event_id"] for s in hub.requests("/events")]

    # Assert: the first event died after 2 attempts; the second went through meanwhile (dead does
    # not block the tenant); the replay published the first.
    assert [d["event_id"] for d in dead] == [str(ids[0])]
    assert dead[0]["attempts"] == 2 and "500" in (dead[0]["last_error"] or "")
    assert seen.count(str(ids[0])) == 3 and seen.count(str(ids[1])) == 1
    assert statuses(engine) == {"published": 2}


WORKFLOWS = """
workflows:
  - name: budget_exhausted_review
    trigger: accute.consent.granted[consent_type=federated_learning]
    steps: [accute.notify_admin, luca.review_privacy_budget]
  - name: ai_training_only
    trigger: accute.consent.granted[consent_type=ai_training]
"""


def test_a_matching_event_starts_its_workflow_once(engine: Engine) -> None:
    # Prepare: two events that match the first workflow only.
    import yaml

    book = parse(yaml.safe_load(WORKFLOWS))
    tenant = uuid.uuid4()
    ids = append_events(engine, [tenant], per_tenant=2)

    def record_hook(session: object, events: object) -> None:
        record(session, book, events)  # type: ignore[arg-type]

    with FakeHub(script={"/workflows/": ["500"]}) as hub:
        relay = http_relay(engine, hub, on_published=record_hook)
        client = HubClient(hub.url, TOKEN, timeout_s=0.5)

        async def scenario() -> None:
            await run_until_settled(relay, engine)
            # The events are published a second time (as after a lost ack): no second execution.
            with transaction(engine) as session:
                session.execute(update(HubOutbox).values(status="pending", next_attempt_at=utcnow()))
            await run_until_settled(http_relay(engine, hub, on_published=record_hook), engine)
            # Execute: the dispatcher starts the executions (the first attempt gets a 500).
            for _ in range(20):
                await dispatch(engine, client, POLICY)
                with transaction(engine) as session:
                    states = session.scalars(select(HubWorkflowExecution.status)).all()
                if states and all(s == "started" for s in states):
                    break
                await asyncio.sleep(0.1)
            await dispatch(engine, client, POLICY)  # nothing left: no further trigger
            await client.close()

        asyncio.run(scenario())
        triggers = hub.requests("/workflows/")

    # Assert
    with transaction(engine) as session:
        rows = session.scalars(select(HubWorkflowExecution)).all()
    assert sorted((r.workflow_id, r.event_id) for r in rows) == sorted(
        ("budget_exhausted_review", i) for i in ids
    )
    assert all(r.status == "started" and r.execution_id for r in rows)
    ok = [t for t in triggers if t.answered == "200"]
    assert len(ok) == 2 and {t.path for t in triggers} == {"/workflows/budget_exhausted_review/trigger"}
    assert sorted(t.body["input"]["event_id"] for t in ok) == sorted(str(i) for i in ids)
    assert all(t.body["tenant_id"] == str(tenant) and t.body["source"] == "accute" for t in triggers)
    keys = [t.headers["idempotency-key"] for t in triggers]
    assert len(triggers) == 3 and len(set(keys)) == 2  # the retry after the 500 reused its key


def test_a_lease_that_expired_lets_another_relay_claim(engine: Engine) -> None:
    # Prepare: a relay claimed a batch and died (its lease is in the past now).
    tenant = uuid.uuid4()
    append_events(engine, [tenant], per_tenant=3)
    claimed = store.claim(engine, "dead-relay", limit=10, lease_s=30)

    # Execute
    while_leased = store.claim(engine, "other", limit=10, lease_s=30)
    later = store.claim(engine, "other", limit=10, lease_s=30, now=utcnow() + timedelta(seconds=31))

    # Assert
    assert len(claimed) == 3 and while_leased == []
    assert [c.sequence for c in later] == [c.sequence for c in claimed]
