"""The domain events Accute publishes to the Fin(Ai)d hub (spec §4, issue 13): one pydantic model each.

An event's ``payload`` is one of the models below, validated when it is appended to the outbox
(``schema.events.append``). Payloads carry ids, codes and numbers, **never personal data**: no
email, name, message text, IP address or free-text reason (those may name a person). Every model
forbids unknown fields, and every string field is a constrained label (``Code``/``Label``/
``Checksum``), never an open ``str``; a test walks every model to keep it so. A ``user_id`` is the
product's pseudonymous UUID: after an erasure it resolves to nothing anywhere.

``EVENT_TYPES`` maps each event type to its model and schema version. A change a consumer could
notice (a removed or renamed field, a changed meaning) takes a new ``version``; an added optional
field does not. ``python -m schema.hub_events`` writes ``json_schemas()`` to
``schema/hub_events.schema.json`` and ``asyncapi()`` (AsyncAPI 3.0) to ``docs/asyncapi.yaml``
(``--check`` compares instead; a test keeps both committed files equal to what the code generates).

Of the spec's ``AccuteEventType`` values this product produces none: it has no clients, projects,
tasks, documents, forms, invoices it generates, payments, subscriptions, agent sessions it starts,
roundtables or employees (those are the Accute practice platform's; ``agentSessions`` and
``invoices`` exist here only as referenced tables, never written). ``NOT_PRODUCED`` lists them with
the reason, so that ``hub status`` and the AsyncAPI reader see the whole vocabulary.
"""

from __future__ import annotations

import json
import math
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from schema.vocab import CONSENT_TYPES, DSR_REQUEST_TYPES, VAMN_HEAD_TYPES

#: A machine code: lowercase letters, digits and ``_ . : -`` (a status, a model type, a task).
Code = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,99}$")]
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def _no_email(value: str) -> str:
    if _EMAIL_LIKE.search(value):
        raise ValueError("looks like an email address; hub events carry no personal data")
    return value


#: An operator-chosen label (a model type, a model version): printable, never an email address.
Label = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"),
    AfterValidator(_no_email),
]
#: A SHA-256 digest in lowercase hex.
Checksum = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

ConsentType = Literal[CONSENT_TYPES]  # type: ignore[valid-type]
DsrType = Literal[DSR_REQUEST_TYPES]  # type: ignore[valid-type]
HeadType = Literal[VAMN_HEAD_TYPES]  # type: ignore[valid-type]


class EventPayload(BaseModel):
    """Base of every payload: unknown fields are an error (nothing slips in by accident)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RoundCompleted(EventPayload):
    """A federated round committed: its aggregated weights are the run's new state."""

    run_id: uuid.UUID
    model_type: Label
    round: int = Field(ge=1)
    accepted: int | None = Field(
        ge=0,
        description="Contributions aggregated in this round; null in central-DP runs, where the tenant is "
        "the unit of privacy and the number of contributors is what the DP protects.",
    )
    weights_checksum: Checksum
    metric_name: Label | None = None
    metric_value: float | None = Field(default=None, description="Held-out metric, when measured at commit.")


class ContributionDecided(EventPayload):
    """A tenant's contribution to a round was accepted, or rejected with a reason code.

    Never sent for central-DP runs: there the tenant is the unit of privacy and its participation
    in a round is what the DP protects.
    """

    contribution_id: uuid.UUID
    run_id: uuid.UUID
    model_type: Label
    round: int = Field(ge=1)
    status: Code = Field(description="accepted, or rejected_consent / _consent_changed / _budget / _invalid.")


class ModelPublished(EventPayload):
    """A model version entered the VAMN registry (pending: it serves nothing yet)."""

    model_id: uuid.UUID
    head_type: HeadType
    model_version: Label
    weights_checksum: Checksum


class ModelPromoted(EventPayload):
    """A model version became the active one of its head; the previous active one was retired."""

    model_id: uuid.UUID
    head_type: HeadType
    model_version: Label
    weights_checksum: Checksum
    retired_model_ids: list[uuid.UUID] = Field(default_factory=list)


class BudgetCrossing(EventPayload):
    """A tenant's privacy budget for a model type crossed a threshold: ``near_cap`` (80 % of the cap,
    ``privacy.ledger.status_of``) or ``exhausted`` (100 %); recorded once per threshold and cap.

    The fields are those of ``privacy.alerts.Crossing``; ``epsilon_spent`` is null when unbounded
    (a non-private release was charged: epsilon is +inf, which JSON cannot carry).
    """

    model_type: Label
    privacy_unit: Code
    threshold: Literal["near_cap", "exhausted"]
    epsilon_spent: float | None = Field(
        ge=0, description="Cumulative epsilon after the charge; null: unbounded."
    )
    epsilon_cap: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    ledger_event_id: int | None = Field(default=None, description="The privacy ledger event that crossed.")

    @field_validator("epsilon_spent", mode="before")
    @classmethod
    def _unbounded_is_null(cls, value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value


class ConsentChanged(EventPayload):
    """A user's consent of one type was granted or withdrawn (only an actual change is published)."""

    consent_id: uuid.UUID
    user_id: uuid.UUID = Field(description="Pseudonymous id; resolves to nothing after an erasure.")
    consent_type: ConsentType
    consent_version: Label


class DeadManSwitchFired(EventPayload):
    """An organization's dead man's switch fired (no heartbeat for its interval plus its grace
    period): its actions ran; the hub notifies the escalation contacts, named by user id only."""

    firing_id: uuid.UUID
    switch_id: uuid.UUID
    fired_at: datetime
    escalation_contacts: list[uuid.UUID] = Field(max_length=20, description="Users to notify (ids only).")
    contact_count: int = Field(ge=0, le=20)
    actions: list[Code] = Field(max_length=20, description="What the switch did, e.g. pause_training.")


class DsrFiled(EventPayload):
    """A data subject request was filed; the hub's products act on it by ``user_id``."""

    request_id: uuid.UUID
    user_id: uuid.UUID
    request_type: DsrType
    deadline: datetime | None = None


class DsrCompleted(EventPayload):
    """A data subject request was carried out (``completed``) or refused (``rejected``)."""

    request_id: uuid.UUID
    user_id: uuid.UUID
    request_type: DsrType
    status: Literal["completed", "rejected"]


class FallbackBilled(EventPayload):
    """A tenant's billed fallback usage of one billing period, as it stands (aggregated, not per request).

    Cumulative figures of the ``fallback_billing`` row, so a consumer keeps the latest per
    (organization, period) and a lost or duplicated event changes nothing.
    """

    billing_id: uuid.UUID
    billing_period_start: date
    billing_period_end: date
    billing_model: Code
    total_fallback_requests: int = Field(ge=0)
    total_fallback_tokens: int = Field(ge=0)
    total_cost_usd: Decimal = Field(ge=0, description="Rounded invoice amount, 4 decimals.")


@dataclass(frozen=True)
class EventType:
    """One event type: its name (also the routing key), payload model and schema version."""

    name: str
    model: type[EventPayload]
    version: int
    tenant: bool
    """True when the event belongs to a tenant (``tenant_id`` set); False for a platform event."""
    emitted_by: str


def _types(*types: EventType) -> dict[str, EventType]:
    return {t.name: t for t in types}


EVENT_TYPES: dict[str, EventType] = _types(
    EventType("accute.fl.round.completed", RoundCompleted, 2, False, "fl_server.governance commit_round"),
    EventType(
        "accute.fl.contribution.accepted",
        ContributionDecided,
        1,
        True,
        "fl_server.governance judge (not in central-DP runs: participation is what they protect)",
    ),
    EventType(
        "accute.fl.contribution.rejected",
        ContributionDecided,
        1,
        True,
        "fl_server.governance admission, dispatch and judge (not in central-DP runs)",
    ),
    EventType("accute.model.published", ModelPublished, 1, False, "schema.registry publish"),
    EventType("accute.model.promoted", ModelPromoted, 1, False, "schema.registry activate"),
    EventType(
        "accute.privacy.budget.near_cap", BudgetCrossing, 1, True, "privacy ledger charge (80 % crossing)"
    ),
    EventType(
        "accute.privacy.budget.exhausted", BudgetCrossing, 1, True, "privacy ledger charge (100 % crossing)"
    ),
    EventType("accute.consent.granted", ConsentChanged, 1, True, "consent_gate.records grant"),
    EventType("accute.consent.withdrawn", ConsentChanged, 1, True, "consent_gate.records withdraw"),
    EventType("accute.dsr.filed", DsrFiled, 1, True, "consent_gate.dsr file_request"),
    EventType(
        "accute.security.dead_man_switch.fired",
        DeadManSwitchFired,
        1,
        True,
        "orchestrator.security.dms_actions notify_escalation_contacts",
    ),
    EventType("accute.dsr.completed", DsrCompleted, 1, True, "consent_gate.dsr process_request"),
    EventType(
        "accute.llm.fallback.billed",
        FallbackBilled,
        1,
        True,
        "orchestrator.accounting billing flush (at most once per organization and period per interval)",
    ),
)

#: The spec's ``AccuteEventType`` values this product does not produce, and why.
NOT_PRODUCED: dict[str, str] = {
    "accute.client.created": "clients are managed by the Accute practice platform, not Accute FL",
    "accute.client.portal.invited": "no client portal here",
    "accute.client.onboarding.completed": "no client onboarding here",
    "accute.project.created": "no projects here",
    "accute.project.budget.exceeded": "no project budgets here (privacy budgets have their own events)",
    "accute.task.assigned": "no tasks here",
    "accute.task.completed": "no tasks here",
    "accute.workflow.executed": "workflows run in the hub; Accute FL only triggers them",
    "accute.document.uploaded": "no documents here",
    "accute.document.signed": "no documents here",
    "accute.form.submitted": "no forms here",
    "accute.invoice.generated": "invoices are referenced (fallback_billing.invoice_id), never generated here",
    "accute.payment.received": "no payments here",
    "accute.subscription.changed": "no subscriptions here",
    "accute.agent.session.started": "agent sessions are the platform's (agentSessions is only referenced); "
    "the cascade answers requests, it starts no session",
    "accute.roundtable.completed": "no roundtables here",
    "accute.employee.onboarded": "no HR here",
    "accute.performance.review.completed": "no HR here",
}


def event_type(name: str) -> EventType:
    """The registered type ``name``; a KeyError names the known ones (a programming error)."""
    try:
        return EVENT_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown hub event type {name!r}; known: {', '.join(sorted(EVENT_TYPES))}") from None


def json_schemas() -> dict[str, Any]:
    """One JSON document: the envelope's schema and each event type's payload schema (by name)."""
    events: dict[str, Any] = {}
    for name in sorted(EVENT_TYPES):
        spec = EVENT_TYPES[name]
        events[name] = {
            "schema_version": spec.version,
            "tenant_scoped": spec.tenant,
            "emitted_by": spec.emitted_by,
            "payload": spec.model.model_json_schema(mode="serialization"),
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Accute FL hub events",
        "description": "Envelope and payloads of the events Accute FL publishes to the Fin(Ai)d hub.",
        "envelope": ENVELOPE_SCHEMA,
        "events": events,
        "not_produced": dict(sorted(NOT_PRODUCED.items())),
    }


#: The envelope of the spec's ``publishEvent`` plus ``event_id`` and ``schema_version``.
ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "source",
        "event_type",
        "tenant_id",
        "payload",
        "correlation_id",
        "timestamp",
        "event_id",
        "schema_version",
    ],
    "properties": {
        "source": {"const": "accute"},
        "event_type": {"type": "string", "enum": sorted(EVENT_TYPES)},
        "tenant_id": {"type": ["string", "null"], "format": "uuid"},
        "payload": {"type": "object"},
        "correlation_id": {"type": "string", "maxLength": 100},
        "timestamp": {"type": "string", "format": "date-time"},
        "event_id": {"type": "string", "format": "uuid", "description": "Idempotency key."},
        "schema_version": {"type": "integer", "minimum": 1},
    },
}


def asyncapi(exchange: str = "finaid.events") -> dict[str, Any]:
    """An AsyncAPI 3.0 document: one channel per event type (the routing key on the topic exchange),
    each message the envelope with that type's payload schema."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name in sorted(EVENT_TYPES):
        spec = EVENT_TYPES[name]
        envelope = json.loads(json.dumps(ENVELOPE_SCHEMA))
        envelope["properties"]["event_type"] = {"const": name}
        envelope["properties"]["schema_version"] = {"const": spec.version}
        if not spec.tenant:
            envelope["properties"]["tenant_id"] = {"type": "null"}
        envelope["properties"]["payload"] = spec.model.model_json_schema(mode="serialization")
        messages[name] = {
            "name": name,
            "title": spec.model.__name__,
            "summary": (spec.model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": envelope,
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": "0.3.0"}},
        }
        channels[name] = {
            "address": name,
            "description": f"Emitted by {spec.emitted_by}.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": exchange, "type": "topic", "durable": True, "autoDelete": False},
                    "bindingVersion": "0.3.0",
                }
            },
        }
        operations[f"publish.{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Accute FL hub events",
            "version": "1.0.0",
            "description": (
                "Domain events Accute FL publishes to the Fin(Ai)d hub through its transactional outbox: "
                "at least once, event_id the idempotency key, a tenant's events in order. Generated by "
                "python -m schema.hub_events; do not edit."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "hub-amqp": {
                "host": "{host}",
                "protocol": "amqp",
                "description": "The hub's RabbitMQ (ACCUTE_HUB_AMQP_URL); a topic exchange.",
                "variables": {"host": {"default": "localhost:5672"}},
            },
            "hub-http": {
                "host": "{host}",
                "protocol": "https",
                "pathname": "/events",
                "description": "The hub's HTTP API (ACCUTE_HUB_URL), POST {hub}/events with the service token.",
                "variables": {"host": {"default": "hub.example.com"}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


#: The committed exports of ``json_schemas()`` and ``asyncapi()``.
SCHEMA_FILE = Path(__file__).with_name("hub_events.schema.json")
ASYNCAPI_FILE = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"


def render_schemas() -> str:
    """``json_schemas()`` as the committed file's text (sorted keys, two-space indent, final newline)."""
    return json.dumps(json_schemas(), indent=2, sort_keys=True) + "\n"


def render_asyncapi() -> str:
    """``asyncapi()`` as YAML (pyyaml, imported here: only this export needs it)."""
    import yaml

    header = "# Generated by `python -m schema.hub_events` from schema/hub_events.py; do not edit.\n"
    body: str = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=100)
    return header + body


def main(argv: list[str] | None = None) -> int:
    """Write both exports, or with ``--check`` exit 1 when a committed one is out of date."""
    args = sys.argv[1:] if argv is None else argv
    files = {SCHEMA_FILE: render_schemas(), ASYNCAPI_FILE: render_asyncapi()}
    if "--check" in args:
        stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path} is out of date; run: python -m schema.hub_events", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path} ({len(EVENT_TYPES)} event types)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
