"""`accute-fl hub …` through the real entry point, against each backend, with a fake hub on loopback
and the real RabbitMQ."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from schema.db import make_engine, transaction
from schema.models import ImmutableAuditLog
from tests.cli.conftest import Runner
from tests.orchestrator.hub.fake_hub import FakeHub
from tests.orchestrator.hub.support import (
    RABBIT_URL,
    Consumer,
    age_events,
    append_events,
    remaining_event_ids,
    require_rabbitmq,
)


def test_status_of_an_empty_outbox(ready_cli: Runner) -> None:
    result = ready_cli("hub", "status", "--json")

    assert result.code == 0, result.err
    numbers = result.json()
    assert numbers["pending"] == 0 and numbers["dead"] == 0 and numbers["oldest_pending_age_s"] is None
    assert numbers["latency_ms_p50"] is None


def test_relay_without_a_hub_says_what_to_set(ready_cli: Runner) -> None:
    result = ready_cli("hub", "relay", "--once")

    assert result.code == 2
    assert "ACCUTE_HUB_AMQP_URL" in result.err and "ACCUTE_HUB_URL" in result.err


def test_dead_letters_are_listed_and_replayed(
    ready_cli: Runner, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the hub refuses the first event once; one attempt is all the policy allows.
    engine = make_engine(database_url)
    tenant = uuid.uuid4()
    ids = append_events(engine, [tenant], per_tenant=2)
    with FakeHub(script={"/events": ["500"]}) as hub:
        monkeypatch.setenv("ACCUTE_HUB_URL", hub.url)
        monkeypatch.setenv("ACCUTE_HUB_TOKEN", "svc-token-0123456789")
        monkeypatch.setenv("ACCUTE_HUB_MAX_ATTEMPTS", "1")
        first = ready_cli("hub", "relay", "--once")
        status = ready_cli("hub", "status", "--json").json()
        dead = ready_cli("hub", "dead", "--json")

        # Execute
        replayed = ready_cli("hub", "replay", str(ids[0]), "--json")
        again = ready_cli("hub", "replay", str(ids[0]))
        unknown = ready_cli("hub", "replay", str(uuid.uuid4()))
        garbage = ready_cli("hub", "replay", "not-an-id")
        second = ready_cli("hub", "relay", "--once")
        after = ready_cli("hub", "status", "--json").json()
        seen = [s.body["event_id"] for s in hub.requests("/events")]

    # Assert
    assert first.code == 0, first.err
    assert "published 1" in first.err and "dead 1" in first.err
    assert status["dead"] == 1 and status["published_total"] == 1
    assert [d["event_id"] for d in dead.json()] == [str(ids[0])]
    assert "500" in dead.json()[0]["last_error"]
    assert replayed.code == 0 and replayed.json()["status"] == "pending"
    assert again.code == 4 and "not dead" in again.err
    assert unknown.code == 3 and garbage.code == 2
    assert second.code == 0, second.err
    assert after["dead"] == 0 and after["pending"] == 0 and after["published_total"] == 2
    assert seen == [str(ids[0]), str(ids[1]), str(ids[0])]
    with transaction(engine) as session:
        actions = session.scalars(select(ImmutableAuditLog.action)).all()
    assert "hub.event.replayed" in actions
    engine.dispose()


def test_relay_once_publishes_to_rabbitmq(
    ready_cli: Runner, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    require_rabbitmq()
    exchange = f"test.accute.{uuid.uuid4().hex[:12]}"
    engine = make_engine(database_url)
    ids = append_events(engine, [uuid.uuid4(), uuid.uuid4()], per_tenant=5)
    monkeypatch.setenv("ACCUTE_HUB_AMQP_URL", RABBIT_URL)
    monkeypatch.setenv("ACCUTE_HUB_EXCHANGE", exchange)

    with Consumer(exchange) as consumer:
        # Execute
        result = ready_cli("hub", "relay", "--once")
        received = consumer.wait_for(len(ids))
    status = ready_cli("hub", "status", "--json").json()
    engine.dispose()

    # Assert
    assert result.code == 0, result.err
    assert "publishing to amqp" in result.err and f"published {len(ids)}" in result.err
    assert "guest:guest" not in result.err  # the broker's password is never printed
    assert sorted(m.event_id for m in received) == sorted(str(i) for i in ids)
    assert status["published_total"] == len(ids) and status["latency_ms_p99"] is not None


def test_relay_once_with_the_broker_down_fails_as_upstream(
    ready_cli: Runner, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    # Prepare: a port nobody listens on.
    engine = make_engine(database_url)
    append_events(engine, [uuid.uuid4()], per_tenant=1)
    engine.dispose()
    monkeypatch.setenv("ACCUTE_HUB_AMQP_URL", "amqp://guest:secret-pw@127.0.0.1:1/")
    monkeypatch.setenv("ACCUTE_HUB_TIMEOUT_S", "2")

    # Execute
    result = ready_cli("hub", "relay", "--once")
    status = ready_cli("hub", "status", "--json").json()

    # Assert: exit 7, the password hidden, the event still pending with no attempt charged.
    assert result.code == 7
    assert "unreachable" in result.err and "secret-pw" not in result.err
    assert status["pending"] == 1 and status["failing"] == 0


def test_workflows_lists_the_spec_examples_and_refuses_a_bad_file(
    ready_cli: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Prepare
    bad = tmp_path_factory.mktemp("wf") / "workflows.yaml"
    bad.write_text("workflows:\n  - name: x\n    trigger: 'not a trigger!'\n")

    # Execute
    shipped = ready_cli("hub", "workflows", "--json")
    monkeypatch.setenv("ACCUTE_HUB_WORKFLOWS_FILE", str(bad))
    refused = ready_cli("hub", "workflows", "--json")

    # Assert
    assert shipped.code == 0, shipped.err
    assert [w["trigger"] for w in shipped.json()["workflows"]] == [
        "accute.invoice.generated",
        "accute.client.created",
        "accute.task.assigned[type=tax_filing]",
    ]
    assert shipped.json()["executions"] == []
    assert refused.code == 2 and "workflow #1 (x)" in refused.err


def test_relay_once_starts_the_matching_workflow_once(
    ready_cli: Runner,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Prepare: a book whose trigger matches the consent events; the HTTP hub is the only sink.
    book = tmp_path_factory.mktemp("wf") / "workflows.yaml"
    book.write_text(
        "workflows:\n  - name: fl_consent_review\n    trigger: accute.consent.granted[consent_type=federated_learning]\n"
    )
    engine = make_engine(database_url)
    ids = append_events(engine, [uuid.uuid4()], per_tenant=2)
    engine.dispose()
    with FakeHub() as hub:
        monkeypatch.setenv("ACCUTE_HUB_URL", hub.url)
        monkeypatch.setenv("ACCUTE_HUB_WORKFLOWS_FILE", str(book))

        # Execute: twice; the second run has nothing left to start.
        first = ready_cli("hub", "relay", "--once")
        second = ready_cli("hub", "relay", "--once")
        listed = ready_cli("hub", "workflows", "--json").json()
        triggers = hub.requests("/workflows/")

    # Assert
    assert first.code == 0 and second.code == 0, first.err + second.err
    assert sorted(t.body["input"]["event_id"] for t in triggers) == sorted(str(i) for i in ids)
    assert {t.path for t in triggers} == {"/workflows/fl_consent_review/trigger"}
    assert sorted(e["status"] for e in listed["executions"]) == ["started", "started"]
    assert all(e["execution_id"].startswith("exec-") for e in listed["executions"])


def test_hub_prune_command(ready_cli: Runner, database_url: str) -> None:
    # Prepare
    engine = make_engine(database_url)
    ids = append_events(engine, [uuid.uuid4()], per_tenant=3)
    age_events(engine, ids[:2], "published", 10)

    # Execute
    kept_young = ready_cli("hub", "prune", "--older-than-days", "30", "--json")
    pruned = ready_cli("hub", "prune", "--json")
    negative = ready_cli("hub", "prune", "--older-than-days", "-1")

    # Assert
    assert kept_young.code == 0 and kept_young.json()["deleted"] == 0
    assert pruned.code == 0 and pruned.json() == {"deleted": 2, "older_than_days": 7.0}
    assert negative.code == 2
    assert remaining_event_ids(engine) == {ids[2]}
    engine.dispose()
