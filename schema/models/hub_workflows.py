"""Cross-product workflow starts (spec §4.3, issue 13; migration 0014).

``hub_workflow_executions`` has one row per (workflow, event) that matched a trigger, written in
the transaction that marks the event published: its primary key is why a workflow starts once per
event however many times the event is published or the relay restarts. The row then waits for the
hub's ``execution_id`` (``pending`` → ``started``; ``dead`` after the retry policy's attempts).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, in_list
from schema.types import JSONBType, TimestampTZ, UUIDType

EXECUTION_STATUSES: tuple[str, ...] = ("pending", "started", "dead")


class HubWorkflowExecution(Base):
    """One workflow started (or to start) by one published event."""

    __tablename__ = "hub_workflow_executions"
    __table_args__ = (
        CheckConstraint(in_list("status", EXECUTION_STATUSES), name="status"),
        Index("idx_hub_workflow_executions_due", "status", "next_attempt_at"),
    )

    workflow_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    input: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    """What the hub receives as the workflow's input: ids and numbers of the event, no personal data."""
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(TimestampTZ)
    execution_id: Mapped[str | None] = mapped_column(String(200))
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime | None] = created_at()
    started_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
