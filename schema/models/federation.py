"""Federated training state: runs, node bindings, per-round outcomes and published models.

The spec's ``federated_learning_contributions`` row says what counted; these tables say which run
and round it belonged to, why a tenant sat a round out, and where a run can resume.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, updated_at, uuid_pk
from schema.types import JSONBType, TimestampTZ, UUIDType


class FlRun(Base):
    """One federated training run; ``last_completed_round`` and ``weights_checksum`` are where it resumes."""

    __tablename__ = "fl_runs"
    __table_args__ = (UniqueConstraint("name"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(100))
    config: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    status: Mapped[str] = mapped_column(String(20), default="running", server_default=text("'running'"))
    last_completed_round: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    weights_checksum: Mapped[str | None] = mapped_column(String(64))
    #: Checksums of every update accepted so far: a resubmitted one is a replay.
    seen_checksums: Mapped[list[str]] = mapped_column(JSONBType, default=list)
    #: How many times a server started (or resumed) the run; a round's rows name the attempt that wrote them.
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: The run lease: which server drives the run, its last sign of life and when the lease lapses.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class FlNodeBinding(Base):
    """Which organization a Flower node speaks for in a run (bound at the run's first contact).

    One node per organization per run: a second node naming the same organization would add its
    clipped update twice to one sum while the ledger charges a single participation.
    """

    __tablename__ = "fl_node_bindings"
    __table_args__ = (
        UniqueConstraint("run_id", "node_id"),
        UniqueConstraint("run_id", "organization_id", name="uq_fl_node_bindings_run_id_organization_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    run_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("fl_runs.id"))
    #: Flower node ids are unsigned 64-bit; stored as text.
    node_id: Mapped[str] = mapped_column(String(20))
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    tenant: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime | None] = created_at()


class FlRoundOutcome(Base):
    """One tenant's fate in one round: taken part (with the contribution row) or skipped, and why."""

    __tablename__ = "fl_round_outcomes"
    __table_args__ = (
        Index("idx_fl_outcomes_run_round", "run_id", "aggregation_round"),
        UniqueConstraint(
            "run_id", "aggregation_round", "organization_id", "attempt", name="uq_fl_round_outcomes_attempt"
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    run_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("fl_runs.id"))
    aggregation_round: Mapped[int] = mapped_column(Integer)
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    tenant: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(50))
    #: False when the tenant sat the round out (consent gate or budget filter) before sampling.
    sampled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    reason: Mapped[str | None] = mapped_column(Text)
    contribution_id: Mapped[uuid.UUID | None] = mapped_column(
        UUIDType, ForeignKey("federated_learning_contributions.id")
    )
    #: The DP parameters the node used, as charged: {"noise_multiplier", "sample_rate", "steps"}.
    dp_event: Mapped[dict[str, Any] | None] = mapped_column(JSONBType)
    epsilon_after: Mapped[float | None] = mapped_column(Float)
    #: The run's attempt (``FlRun.attempt``) that wrote the row; earlier attempts' rows become ``aborted``.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    #: A robust aggregator found the update far from the others (Krum-excluded or far from the median).
    outlier: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime | None] = created_at()


class FlRoundSummary(Base):
    """A completed round: its aggregated metric and who took part."""

    __tablename__ = "fl_round_summaries"
    __table_args__ = (UniqueConstraint("run_id", "aggregation_round"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    run_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("fl_runs.id"))
    aggregation_round: Mapped[int] = mapped_column(Integer)
    metric_name: Mapped[str] = mapped_column(String(50))
    metric_value: Mapped[float | None] = mapped_column(Float)
    accepted: Mapped[int] = mapped_column(Integer)
    weights_checksum: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime | None] = created_at()


class FlPublishedModel(Base):
    """The evaluation behind a registry row, so the next version can be compared with it."""

    __tablename__ = "fl_published_models"
    __table_args__ = (UniqueConstraint("registry_id"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    registry_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("vamn_model_registry.id"))
    run_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("fl_runs.id"))
    aggregation_round: Mapped[int] = mapped_column(Integer)
    metric_name: Mapped[str] = mapped_column(String(50))
    metric_value: Mapped[float | None] = mapped_column(Float)
    higher_is_better: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime | None] = created_at()
