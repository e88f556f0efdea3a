"""Cross-product workflows: triggers from YAML, started once per matching event (spec §4.3).

- ``load``: the workflow book (``workflows.yaml`` beside this module unless
  ``ACCUTE_HUB_WORKFLOWS_FILE`` names another); a trigger is an event type with optional payload
  filters, ``accute.task.assigned[type=tax_filing]`` as the spec writes it.
- ``record``: in the transaction that marks events published, one ``hub_workflow_executions`` row
  per (workflow, event) that matches; the key makes a second publication of the event a no-op.
- ``dispatch``: starts the recorded executions through the hub (``trigger_workflow``), with the
  outbox's retry policy; the ``Idempotency-Key`` ``<workflow>:<event id>`` lets the hub drop a
  repeat after a lost answer or a crash between its answer and our commit.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator.hub.backoff import RetryPolicy
from orchestrator.hub.client import HubClient, HubRefusal
from orchestrator.hub.store import Claimed
from schema.db import transaction
from schema.errors import ConfigurationError
from schema.models.hub_workflows import HubWorkflowExecution
from schema.timeutil import utcnow

DEFAULT_FILE = Path(__file__).with_name("workflows.yaml")
_TRIGGER = re.compile(r"^(?P<type>[a-z0-9_.]+)(?:\[(?P<where>[^\]]*)\])?$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True)
class Trigger:
    event_type: str
    where: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Trigger:
        match = _TRIGGER.match(text.strip())
        if match is None:
            raise ValueError(f"trigger '{text}' is not 'event.type' or 'event.type[key=value,...]'")
        where: list[tuple[str, str]] = []
        for part in filter(None, (p.strip() for p in (match["where"] or "").split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"trigger '{text}': filter '{part}' is not key=value")
            where.append((key.strip(), value.strip()))
        return cls(match["type"], tuple(where))

    def matches(self, event_type: str, payload: dict[str, Any]) -> bool:
        """The event type is ours and every filter equals the payload's value (compared as text)."""
        return event_type == self.event_type and all(
            key in payload and str(payload[key]) == value for key, value in self.where
        )


@dataclass(frozen=True)
class Workflow:
    name: str
    trigger: Trigger
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkflowBook:
    workflows: tuple[Workflow, ...]

    def matching(self, event_type: str, payload: dict[str, Any]) -> list[Workflow]:
        return [w for w in self.workflows if w.trigger.matches(event_type, payload)]


def parse(document: Any, source: str = "workflows") -> WorkflowBook:
    """A book from the YAML document's data; ``ConfigurationError`` naming the entry at fault."""
    entries = document.get("workflows") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigurationError(f"{source} has no 'workflows:' list; see orchestrator/hub/workflows.yaml")
    workflows: list[Workflow] = []
    for index, entry in enumerate(entries):
        where = f"{source}: workflow #{index + 1}"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not _NAME.match(entry["name"])
        ):
            raise ConfigurationError(f"{where} needs a 'name' of letters, digits, '_', '.', '-'")
        try:
            trigger = Trigger.parse(str(entry.get("trigger", "")))
        except ValueError as exc:
            raise ConfigurationError(f"{where} ({entry['name']}): {exc}") from None
        steps = entry.get("steps") or []
        if not isinstance(steps, list):
            raise ConfigurationError(f"{where} ({entry['name']}): 'steps' must be a list")
        workflows.append(Workflow(entry["name"], trigger, tuple(str(s) for s in steps)))
    names = [w.name for w in workflows]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{source} names a workflow twice; names must be unique")
    return WorkflowBook(tuple(workflows))


def load(path: Path | str | None = None) -> WorkflowBook:
    """The book in ``path`` (default: the spec's examples beside this module)."""
    import yaml

    file = Path(path) if path else DEFAULT_FILE
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the workflows file {file} ({exc.strerror}); check ACCUTE_HUB_WORKFLOWS_FILE"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(
            f"the workflows file {file} is not valid YAML ({str(exc).splitlines()[0]})"
        ) from None
    return parse(document, str(file))


def workflow_input(event: Claimed) -> dict[str, Any]:
    """What a workflow receives: the event's ids and payload (payloads carry no personal data)."""
    return {
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "correlation_id": event.correlation_id,
        "payload": event.envelope.get("payload", {}),
    }


def record(session: Session, book: WorkflowBook, events: Sequence[Claimed]) -> int:
    """Insert one pending execution per (workflow, matching event); existing pairs are left alone.

    Runs in the transaction that marks the events published; returns the rows it tried to add.
    """
    now = utcnow()
    rows = [
        {
            "workflow_id": workflow.name,
            "event_id": event.event_id,
            "organization_id": event.organization_id,
            "input": workflow_input(event),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
        }
        for event in events
        for workflow in book.matching(event.event_type, event.envelope.get("payload", {}))
    ]
    if not rows:
        return 0
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(HubWorkflowExecution).on_conflict_do_nothing(
        index_elements=["workflow_id", "event_id"]
    )
    session.execute(statement, rows)
    return len(rows)


async def trigger_workflow(
    client: HubClient,
    workflow_id: str,
    organization_id: uuid.UUID | str | None,
    input_data: dict[str, Any],
    *,
    idempotency_key: str | None = None,
) -> str:
    """The spec's ``triggerCrossProductWorkflow``: start ``workflow_id`` for the tenant; its
    execution id. Raises ``HubRefusal`` when the hub does not accept it."""
    return await client.trigger_workflow(
        workflow_id,
        None if organization_id is None else str(organization_id),
        input_data,
        idempotency_key=idempotency_key or f"{workflow_id}:{uuid.uuid4()}",
    )


@dataclass
class DispatchReport:
    started: int = 0
    failed: int = 0
    dead: int = 0


def _claim(
    engine: Engine, limit: int, lease_s: float
) -> list[tuple[str, uuid.UUID, uuid.UUID | None, dict[str, Any], int]]:
    """Due pending executions, leased by pushing ``next_attempt_at`` past the lease (a dispatcher
    that dies lets them come due again; the idempotency key covers a repeat)."""
    now = utcnow()
    with transaction(engine) as session:
        rows = session.scalars(
            select(HubWorkflowExecution)
            .where(HubWorkflowExecution.status == "pending", HubWorkflowExecution.next_attempt_at <= now)
            .order_by(HubWorkflowExecution.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            row.next_attempt_at = now + timedelta(seconds=lease_s)
        return [(r.workflow_id, r.event_id, r.organization_id, dict(r.input), r.attempts) for r in rows]


def _finish(engine: Engine, workflow_id: str, event_id: uuid.UUID, values: dict[str, Any]) -> None:
    with transaction(engine) as session:
        row = session.get(HubWorkflowExecution, (workflow_id, event_id))
        if row is not None:
            for key, value in values.items():
                setattr(row, key, value)


async def dispatch(
    engine: Engine, client: HubClient, policy: RetryPolicy, *, limit: int = 50, lease_s: float = 60.0
) -> DispatchReport:
    """Start the due executions one by one (a few per relay step; the hub is not a bulk API)."""
    import asyncio

    report = DispatchReport()
    for workflow_id, event_id, organization_id, input_data, attempts in await asyncio.to_thread(
        _claim, engine, limit, lease_s
    ):
        try:
            execution_id = await trigger_workflow(
                client, workflow_id, organization_id, input_data, idempotency_key=f"{workflow_id}:{event_id}"
            )
        except HubRefusal as refusal:
            tried = attempts + 1
            dead = policy.exhausted(tried)
            report.failed += 1
            report.dead += dead
            values: dict[str, Any] = {
                "attempts": tried,
                "status": "dead" if dead else "pending",
                "last_error": refusal.reason[:500],
                "next_attempt_at": utcnow() + timedelta(seconds=policy.delay(tried, refusal.retry_after_s)),
            }
        else:
            report.started += 1
            values = {
                "status": "started",
                "execution_id": execution_id[:200],
                "started_at": utcnow(),
                "last_error": None,
            }
        await asyncio.to_thread(_finish, engine, workflow_id, event_id, values)
    return report


def executions(session: Session, *, limit: int = 100) -> list[dict[str, Any]]:
    """Recent executions, newest first (for the operator)."""
    rows = session.scalars(
        select(HubWorkflowExecution).order_by(HubWorkflowExecution.created_at.desc()).limit(limit)
    ).all()
    return [
        {
            "workflow_id": r.workflow_id,
            "event_id": str(r.event_id),
            "organization_id": None if r.organization_id is None else str(r.organization_id),
            "status": r.status,
            "attempts": r.attempts,
            "execution_id": r.execution_id,
            "last_error": r.last_error,
        }
        for r in rows
    ]
