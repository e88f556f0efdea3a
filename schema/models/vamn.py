"""VAMN integration tables (spec §1.3): the registry, inference log, FL contributions, agent routing."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, in_list, ordered_index, updated_at, uuid_pk
from schema.types import JSONBType, TextArrayType, TimestampTZ, UUIDType
from schema.vocab import CONTRIBUTION_TYPES, VAMN_HEAD_TYPES


class VamnModelRegistry(Base):
    """A published model version for one VAMN head; weights live in the content-addressed store."""

    __tablename__ = "vamn_model_registry"
    __table_args__ = (
        CheckConstraint(in_list("head_type", VAMN_HEAD_TYPES), name="head_type"),
        UniqueConstraint("model_name", "model_version", "head_type"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    head_type: Mapped[str] = mapped_column(String(50))
    weights_checksum: Mapped[str] = mapped_column(String(128))
    is_active: Mapped[bool | None] = mapped_column(Boolean, server_default=true())
    deployment_status: Mapped[str | None] = mapped_column(String(50), server_default=text("'pending'"))
    last_health_check: Mapped[datetime | None] = mapped_column(TimestampTZ)
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class VamnInferenceLog(Base):
    """One inference served by a VAMN head."""

    __tablename__ = "vamn_inference_log"
    __table_args__ = (Index("idx_vamn_inference_status", "status"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    agent_slug: Mapped[str] = mapped_column(String(100))
    session_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("agentSessions.id"))
    head_type: Mapped[str] = mapped_column(String(50))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    gpu_memory_mb: Mapped[int | None] = mapped_column(Integer)
    cache_hit: Mapped[bool | None] = mapped_column(Boolean, server_default=false())
    status: Mapped[str] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = created_at()


class FederatedLearningContribution(Base):
    """One tenant's contribution to one aggregation round, with the status that says why it counted or not."""

    __tablename__ = "federated_learning_contributions"
    __table_args__ = (
        CheckConstraint(in_list("contribution_type", CONTRIBUTION_TYPES), name="contribution_type"),
        Index("idx_federated_org", "organization_id"),
        Index("idx_federated_round", "aggregation_round"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    model_type: Mapped[str] = mapped_column(String(100))
    contribution_type: Mapped[str | None] = mapped_column(String(50))
    gradient_checksum: Mapped[str] = mapped_column(String(128))
    contribution_weight: Mapped[Decimal] = mapped_column(Numeric(10, 6))
    privacy_budget_consumed: Mapped[Decimal] = mapped_column(Numeric(10, 6))
    aggregation_round: Mapped[int] = mapped_column(Integer)
    status: Mapped[str | None] = mapped_column(String(50), server_default=text("'pending'"))
    created_at: Mapped[datetime | None] = created_at()


class AgentVamnRouting(Base):
    """Which VAMN head serves each of the 12 agents (seeded by the first migration)."""

    __tablename__ = "agent_vamn_routing"
    __table_args__ = (CheckConstraint(in_list("primary_head", VAMN_HEAD_TYPES), name="primary_head"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    agent_slug: Mapped[str] = mapped_column(String(100), unique=True)
    primary_head: Mapped[str] = mapped_column(String(50))
    secondary_heads: Mapped[list[str] | None] = mapped_column(TextArrayType)
    routing_rules: Mapped[dict[str, Any] | None] = mapped_column(JSONBType, server_default=text("'{}'"))
    created_at: Mapped[datetime | None] = created_at()


# Indexes with a descending column are built on the mapped columns (see ordered_index).
ordered_index("idx_vamn_inference_org", VamnInferenceLog, "organization_id", "created_at DESC")
ordered_index("idx_vamn_inference_agent", VamnInferenceLog, "agent_slug", "created_at DESC")
