"""Multi-LLM tables (spec §2.3): tenant provider configs, fine-tuned models, usage, fallback billing."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, in_list, ordered_index, updated_at, uuid_pk
from schema.types import JSONBType, TimestampTZ, UUIDType
from schema.vocab import BILLING_MODELS, DEPLOYMENT_TYPES, LLM_PROVIDERS


class TenantLlmConfig(Base):
    """A tenant's own LLM provider; the key is AES-256-GCM ciphertext under the tenant's data key."""

    __tablename__ = "tenant_llm_config"
    __table_args__ = (
        CheckConstraint(in_list("provider", LLM_PROVIDERS), name="provider"),
        UniqueConstraint("organization_id", "provider", "model_id"),
        Index("idx_tenant_llm_active", "organization_id", "is_active", "priority"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("workspaces.id"))
    provider: Mapped[str] = mapped_column(String(50))
    display_name: Mapped[str] = mapped_column(String(100))
    api_key_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    api_endpoint: Mapped[str | None] = mapped_column(String(500))
    model_id: Mapped[str] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    is_active: Mapped[bool | None] = mapped_column(Boolean, server_default=true())
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer, server_default=text("60"))
    rate_limit_tpm: Mapped[int | None] = mapped_column(Integer, server_default=text("100000"))
    max_tokens: Mapped[int | None] = mapped_column(Integer, server_default=text("4096"))
    temperature: Mapped[Decimal | None] = mapped_column(Numeric(3, 2), server_default=text("0.7"))
    config_json: Mapped[dict[str, Any] | None] = mapped_column(JSONBType, server_default=text("'{}'"))
    last_health_check: Mapped[datetime | None] = mapped_column(TimestampTZ)
    health_status: Mapped[str | None] = mapped_column(String(50), server_default=text("'unknown'"))
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class FineTunedModelConfig(Base):
    """A fine-tuned model, the tenant's own or (organization_id NULL) the platform's."""

    __tablename__ = "fine_tuned_model_config"
    __table_args__ = (
        CheckConstraint(in_list("deployment_type", DEPLOYMENT_TYPES), name="deployment_type"),
        Index("idx_fine_tuned_org", "organization_id", "is_active"),
        Index("idx_fine_tuned_purpose", "model_purpose"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    model_name: Mapped[str] = mapped_column(String(200))
    base_provider: Mapped[str] = mapped_column(String(50))
    base_model: Mapped[str] = mapped_column(String(200))
    fine_tune_id: Mapped[str | None] = mapped_column(String(200))
    deployment_type: Mapped[str] = mapped_column(String(50))
    endpoint_url: Mapped[str | None] = mapped_column(String(500))
    api_key_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    model_purpose: Mapped[str] = mapped_column(String(100))
    training_data_hash: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(50))
    is_active: Mapped[bool | None] = mapped_column(Boolean, server_default=true())
    is_vamn_predecessor: Mapped[bool | None] = mapped_column(Boolean, server_default=false())
    performance_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONBType, server_default=text("'{}'"))
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class LlmUsageLog(Base):
    """One LLM call; ``is_fallback`` marks the calls the platform bills."""

    __tablename__ = "llm_usage_log"
    __table_args__ = ()

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("users.id"))
    agent_slug: Mapped[str | None] = mapped_column(String(100))
    session_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("agentSessions.id"))
    llm_config_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("tenant_llm_config.id"))
    fine_tuned_model_id: Mapped[uuid.UUID | None] = mapped_column(
        UUIDType, ForeignKey("fine_tuned_model_config.id")
    )
    provider: Mapped[str] = mapped_column(String(50))
    model_id: Mapped[str] = mapped_column(String(200))
    is_fallback: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(
        Integer, Computed("input_tokens + output_tokens", persisted=True)
    )
    latency_ms: Mapped[int] = mapped_column(Integer)
    estimated_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(10, 6))
    request_type: Mapped[str | None] = mapped_column(String(100))
    cache_hit: Mapped[bool | None] = mapped_column(Boolean, server_default=false())
    status: Mapped[str] = mapped_column(String(50))
    error_code: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime | None] = created_at()


class FallbackBilling(Base):
    """Billed fallback usage of one tenant for one billing period."""

    __tablename__ = "fallback_billing"
    __table_args__ = (
        CheckConstraint(in_list("billing_model", BILLING_MODELS), name="billing_model"),
        UniqueConstraint("organization_id", "billing_period_start", "billing_period_end"),
        Index("idx_fallback_billing_org", "organization_id", "billing_period_start"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    billing_period_start: Mapped[date] = mapped_column(Date)
    billing_period_end: Mapped[date] = mapped_column(Date)
    total_fallback_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    total_fallback_requests: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    total_cost_usd: Mapped[Decimal] = mapped_column(
        Numeric(12, 4), default=Decimal(0), server_default=text("0")
    )
    """The invoice line: ``total_cost_exact_usd`` rounded once, half up, to 4 decimals."""
    total_cost_exact_usd: Mapped[Decimal] = mapped_column(
        Numeric(24, 12), default=Decimal(0), server_default=text("0")
    )
    """Exact sum of the period's charges (each request's list price, unrounded)."""
    billing_model: Mapped[str] = mapped_column(String(50))
    bundle_tokens_remaining: Mapped[int | None] = mapped_column(BigInteger)
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("invoices.id"))
    invoice_status: Mapped[str | None] = mapped_column(String(50), server_default=text("'pending'"))
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


# Indexes with a descending column are built on the mapped columns (see ordered_index).
ordered_index("idx_llm_usage_org", LlmUsageLog, "organization_id", "created_at DESC")
ordered_index(
    "idx_llm_usage_fallback",
    LlmUsageLog,
    "is_fallback",
    "created_at DESC",
    postgresql_where=text("is_fallback = true"),
    sqlite_where=text("is_fallback = 1"),
)
ordered_index("idx_llm_usage_agent", LlmUsageLog, "agent_slug", "created_at DESC")
