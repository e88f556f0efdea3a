"""The hub outbox: an event is written in the caller's transaction, validated, and enveloped as the spec's
``publishEvent``; the event types' JSON Schemas are committed; no payload can carry personal data."""

from __future__ import annotations

import typing
import uuid
from datetime import date
from decimal import Decimal

import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, select

from schema import events, hub_events
from schema.db import transaction
from schema.errors import InvalidInputError
from schema.models import HubOutbox

ORG = uuid.uuid4()
CONSENT = {
    "consent_id": str(uuid.uuid4()),
    "user_id": str(uuid.uuid4()),
    "consent_type": "federated_learning",
    "consent_version": "1.0",
}


def outbox(engine: Engine) -> list[HubOutbox]:
    with transaction(engine) as session:
        rows = list(session.scalars(select(HubOutbox).order_by(HubOutbox.sequence)))
        session.expunge_all()
    return rows


def test_append_writes_a_pending_row_that_commits_with_the_transaction(engine: Engine) -> None:
    # Execute
    with transaction(engine) as session:
        event_id = events.append(
            session,
            event_type="accute.consent.granted",
            organization_id=ORG,
            payload=CONSENT,
            correlation_id="req-1",
        )

    # Assert
    (row,) = outbox(engine)
    assert row.event_id == event_id
    assert (row.event_type, row.schema_version, row.organization_id) == ("accute.consent.granted", 1, ORG)
    assert (row.status, row.attempts, row.published_at, row.last_error) == ("pending", 0, None, None)
    assert row.payload == CONSENT
    assert row.correlation_id == "req-1"


def test_an_event_of_a_rolled_back_transaction_is_not_written(engine: Engine) -> None:
    # Execute
    with pytest.raises(RuntimeError), transaction(engine) as session:
        events.append(session, event_type="accute.consent.granted", organization_id=ORG, payload=CONSENT)
        raise RuntimeError("the change fails after its event was appended")

    # Assert
    assert outbox(engine) == []


def test_sequence_follows_the_order_of_appends(engine: Engine) -> None:
    with transaction(engine) as session:
        ids = [
            events.append(session, event_type="accute.consent.granted", organization_id=ORG, payload=CONSENT)
            for _ in range(3)
        ]
    rows = outbox(engine)
    assert [r.event_id for r in rows] == ids
    assert [r.sequence for r in rows] == sorted(r.sequence for r in rows)
    assert len({r.sequence for r in rows}) == 3


def test_envelope_is_the_spec_publish_event_body_plus_id_and_version(engine: Engine) -> None:
    # Prepare
    with transaction(engine) as session:
        event_id = events.append(
            session, event_type="accute.consent.withdrawn", organization_id=ORG, payload=CONSENT
        )
    (row,) = outbox(engine)

    # Execute
    body = events.envelope(row)

    # Assert: every field of the envelope schema, nothing else; no correlation id given -> the event's own.
    assert set(body) == set(hub_events.ENVELOPE_SCHEMA["required"])
    assert body["source"] == "accute"
    assert body["event_type"] == "accute.consent.withdrawn"
    assert body["tenant_id"] == str(ORG)
    assert body["payload"] == CONSENT
    assert body["event_id"] == str(event_id)
    assert body["correlation_id"] == str(event_id)
    assert body["schema_version"] == 1
    assert body["timestamp"].endswith("+00:00")


def test_platform_event_has_no_tenant(engine: Engine) -> None:
    payload = {
        "model_id": str(uuid.uuid4()),
        "head_type": "semantic",
        "model_version": "v1",
        "weights_checksum": "a" * 64,
    }
    with transaction(engine) as session:
        events.append(session, event_type="accute.model.published", organization_id=None, payload=payload)
        with pytest.raises(ValueError, match="platform event"):
            events.append(session, event_type="accute.model.published", organization_id=ORG, payload=payload)
        with pytest.raises(ValueError, match="belongs to a tenant"):
            events.append(session, event_type="accute.consent.granted", organization_id=None, payload=CONSENT)
    (row,) = outbox(engine)
    assert events.envelope(row)["tenant_id"] is None


@pytest.mark.parametrize(
    "extra",
    [
        {"email": "ada@example.com"},
        {"name": "Ada Lovelace"},
        {"message": "hello"},
        {"ip_address": "10.0.0.1"},
    ],
)
def test_payload_with_an_unknown_field_is_refused(extra: dict[str, str]) -> None:
    with pytest.raises(InvalidInputError, match=rf"accute\.consent\.granted.*{next(iter(extra))}"):
        events.validate("accute.consent.granted", CONSENT | extra)


def test_a_label_field_refuses_an_email_address() -> None:
    with pytest.raises(InvalidInputError, match="consent_version"):
        events.validate("accute.consent.granted", CONSENT | {"consent_version": "ada@example.com"})


def test_unknown_event_type_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match=r"accute\.nope"):
        events.validate("accute.nope", {})


def test_fallback_billed_cost_keeps_its_decimals() -> None:
    data = events.validate(
        "accute.llm.fallback.billed",
        {
            "billing_id": uuid.uuid4(),
            "billing_period_start": date(2026, 11, 1),
            "billing_period_end": date(2026, 11, 30),
            "billing_model": "pay_as_you_go",
            "total_fallback_requests": 3,
            "total_fallback_tokens": 120,
            "total_cost_usd": Decimal("0.0123"),
        },
    )
    assert data["total_cost_usd"] == "0.0123"
    assert data["billing_period_start"] == "2026-11-01"


#: Field names that would carry personal data; no payload model may have one.
PERSONAL_FIELDS = {
    "email",
    "name",
    "first_name",
    "last_name",
    "message",
    "reason",
    "ip_address",
    "user_agent",
}


def _string_fields(model: type[BaseModel]) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation) or (annotation,)
        if str in args and not info.metadata:
            found.append((name, annotation))
    return found


@pytest.mark.parametrize("name", sorted(hub_events.EVENT_TYPES))
def test_no_event_type_has_a_personal_or_open_text_field(name: str) -> None:
    model = hub_events.EVENT_TYPES[name].model
    assert model.model_config.get("extra") == "forbid"
    assert not PERSONAL_FIELDS & set(model.model_fields)
    assert _string_fields(model) == [], "use Code, Label or Checksum, never an open str"


def test_committed_json_schema_and_asyncapi_files_equal_what_the_code_generates() -> None:
    hint = "run: python -m schema.hub_events"
    assert hub_events.SCHEMA_FILE.read_text() == hub_events.render_schemas(), hint
    assert hub_events.ASYNCAPI_FILE.read_text() == hub_events.render_asyncapi(), hint
    assert hub_events.main(["--check"]) == 0


def test_asyncapi_document_has_a_channel_and_message_per_event_type() -> None:
    import yaml

    document = yaml.safe_load(hub_events.ASYNCAPI_FILE.read_text())
    assert document["asyncapi"] == "3.0.0"
    assert set(document["channels"]) == set(document["components"]["messages"]) == set(hub_events.EVENT_TYPES)
    message = document["components"]["messages"]["accute.consent.granted"]
    assert message["payload"]["properties"]["event_type"] == {"const": "accute.consent.granted"}
    assert message["payload"]["properties"]["payload"]["additionalProperties"] is False
    binding = document["channels"]["accute.consent.granted"]["bindings"]["amqp"]
    assert binding["exchange"]["name"] == "finaid.events" and binding["exchange"]["type"] == "topic"


def test_every_spec_event_type_is_either_produced_or_listed_as_not_produced() -> None:
    spec_types = {
        "accute.client.created",
        "accute.client.portal.invited",
        "accute.client.onboarding.completed",
        "accute.project.created",
        "accute.project.budget.exceeded",
        "accute.task.assigned",
        "accute.task.completed",
        "accute.workflow.executed",
        "accute.document.uploaded",
        "accute.document.signed",
        "accute.form.submitted",
        "accute.invoice.generated",
        "accute.payment.received",
        "accute.subscription.changed",
        "accute.agent.session.started",
        "accute.roundtable.completed",
        "accute.employee.onboarded",
        "accute.performance.review.completed",
    }
    assert spec_types <= set(hub_events.EVENT_TYPES) | set(hub_events.NOT_PRODUCED)
    assert not set(hub_events.EVENT_TYPES) & set(hub_events.NOT_PRODUCED)


def test_an_unbounded_budget_is_reported_as_null_epsilon() -> None:
    payload = {
        "model_type": "digits",
        "privacy_unit": "record",
        "threshold": "exhausted",
        "epsilon_spent": float("inf"),
        "epsilon_cap": 8.0,
        "delta": 1e-5,
        "ledger_event_id": 7,
    }
    assert events.validate("accute.privacy.budget.exhausted", payload)["epsilon_spent"] is None
    assert (
        events.validate("accute.privacy.budget.near_cap", payload | {"epsilon_spent": 6.5})["epsilon_spent"]
        == 6.5
    )
