"""Initial schema: every table of the spec, the referenced platform tables, and the agent routing seed.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 16:58:08.852537
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from schema.types import gen_random_uuid

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_vamn_routing",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("agent_slug", sa.String(length=100), nullable=False),
        sa.Column("primary_head", sa.String(length=50), nullable=False),
        sa.Column(
            "secondary_heads",
            sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "routing_rules",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            server_default=sa.text("'{}'"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "primary_head IN ('semantic', 'quantitative', 'citation')",
            name=op.f("ck_agent_vamn_routing_primary_head"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_vamn_routing")),
        sa.UniqueConstraint("agent_slug", name=op.f("uq_agent_vamn_routing_agent_slug")),
    )
    op.create_table(
        "immutable_audit_log",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("resource_type", sa.String(length=100), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=True),
        sa.Column(
            "action_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "ip_address", sa.String(length=45).with_variant(postgresql.INET(), "postgresql"), nullable=True
        ),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("previous_hash", sa.String(length=128), nullable=False),
        sa.Column("record_hash", sa.String(length=128), nullable=False),
        sa.Column("blockchain_tx_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_immutable_audit_log")),
    )
    op.create_index("idx_audit_hash", "immutable_audit_log", ["record_hash"], unique=False)
    op.create_index(
        "idx_audit_org",
        "immutable_audit_log",
        ["organization_id", sa.literal_column("created_at DESC")],
        unique=False,
    )

    op.create_table(
        "organizations",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column(
            "billing_model", sa.String(length=50), server_default=sa.text("'pay_as_you_go'"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "billing_model IN ('pay_as_you_go', 'token_bundle', 'unlimited_tier', 'hybrid')",
            name=op.f("ck_organizations_billing_model"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("name", name=op.f("uq_organizations_name")),
    )
    op.create_table(
        "threat_intelligence",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("indicator_type", sa.String(length=50), nullable=False),
        sa.Column("indicator_value", sa.String(length=500), nullable=False),
        sa.Column("threat_type", sa.String(length=100), nullable=False),
        sa.Column("severity", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("confidence", sa.Numeric(precision=5, scale=2), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            server_default=sa.text("'{}'"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "indicator_type IN ('ip', 'domain', 'hash', 'email', 'url', 'user_agent')",
            name=op.f("ck_threat_intelligence_indicator_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_threat_intelligence")),
    )
    op.create_index("idx_threat_active", "threat_intelligence", ["is_active", "indicator_type"], unique=False)
    op.create_index(
        "idx_threat_indicator", "threat_intelligence", ["indicator_type", "indicator_value"], unique=False
    )

    op.create_table(
        "vamn_model_registry",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("model_name", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=50), nullable=False),
        sa.Column("head_type", sa.String(length=50), nullable=False),
        sa.Column("weights_checksum", sa.String(length=128), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=True),
        sa.Column(
            "deployment_status", sa.String(length=50), server_default=sa.text("'pending'"), nullable=True
        ),
        sa.Column("last_health_check", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "head_type IN ('semantic', 'quantitative', 'citation')",
            name=op.f("ck_vamn_model_registry_head_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vamn_model_registry")),
        sa.UniqueConstraint(
            "model_name", "model_version", "head_type", name=op.f("uq_vamn_model_registry_model_name")
        ),
    )
    op.create_table(
        "federated_learning_contributions",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("model_type", sa.String(length=100), nullable=False),
        sa.Column("contribution_type", sa.String(length=50), nullable=True),
        sa.Column("gradient_checksum", sa.String(length=128), nullable=False),
        sa.Column("contribution_weight", sa.Numeric(precision=10, scale=6), nullable=False),
        sa.Column("privacy_budget_consumed", sa.Numeric(precision=10, scale=6), nullable=False),
        sa.Column("aggregation_round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=50), server_default=sa.text("'pending'"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "contribution_type IN ('workflow_patterns', 'document_templates', 'tax_rules', 'compliance_checks', 'time_estimation', 'workload_prediction')",
            name=op.f("ck_federated_learning_contributions_contribution_type"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_federated_learning_contributions_organization_id"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federated_learning_contributions")),
    )
    op.create_index(
        "idx_federated_org", "federated_learning_contributions", ["organization_id"], unique=False
    )
    op.create_index(
        "idx_federated_round", "federated_learning_contributions", ["aggregation_round"], unique=False
    )

    op.create_table(
        "fine_tuned_model_config",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("base_provider", sa.String(length=50), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("fine_tune_id", sa.String(length=200), nullable=True),
        sa.Column("deployment_type", sa.String(length=50), nullable=False),
        sa.Column("endpoint_url", sa.String(length=500), nullable=True),
        sa.Column("api_key_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("model_purpose", sa.String(length=100), nullable=False),
        sa.Column("training_data_hash", sa.String(length=128), nullable=True),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=True),
        sa.Column("is_vamn_predecessor", sa.Boolean(), server_default=sa.false(), nullable=True),
        sa.Column(
            "performance_metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            server_default=sa.text("'{}'"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "deployment_type IN ('hosted', 'azure_ml', 'sagemaker', 'vertex', 'self_hosted')",
            name=op.f("ck_fine_tuned_model_config_deployment_type"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_fine_tuned_model_config_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fine_tuned_model_config")),
    )
    op.create_index(
        "idx_fine_tuned_org", "fine_tuned_model_config", ["organization_id", "is_active"], unique=False
    )
    op.create_index("idx_fine_tuned_purpose", "fine_tuned_model_config", ["model_purpose"], unique=False)

    op.create_table(
        "hsm_key_registry",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("key_name", sa.String(length=100), nullable=False),
        sa.Column("key_vault_uri", sa.String(length=500), nullable=False),
        sa.Column("key_version", sa.String(length=100), nullable=False),
        sa.Column("key_purpose", sa.String(length=100), nullable=False),
        sa.Column(
            "algorithm", sa.String(length=50), server_default=sa.text("'RSA-OAEP-256'"), nullable=False
        ),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=True),
        sa.Column("rotation_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "key_purpose IN ('organization_dek', 'llm_api_keys', 'document_encryption', 'payment_credentials', 'signing', 'master_kek')",
            name=op.f("ck_hsm_key_registry_key_purpose"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_hsm_key_registry_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hsm_key_registry")),
        sa.UniqueConstraint(
            "organization_id", "key_purpose", name=op.f("uq_hsm_key_registry_organization_id")
        ),
    )
    op.create_index("idx_hsm_org", "hsm_key_registry", ["organization_id", "is_active"], unique=False)

    op.create_table(
        "invoices",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column(
            "amount_usd", sa.Numeric(precision=12, scale=4), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("status", sa.String(length=50), server_default=sa.text("'draft'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_invoices_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
    )
    op.create_index(op.f("ix_invoices_organization_id"), "invoices", ["organization_id"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_users_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("organization_id", "email", name=op.f("uq_users_organization_id")),
    )
    op.create_index(op.f("ix_users_organization_id"), "users", ["organization_id"], unique=False)

    op.create_table(
        "workspaces",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_workspaces_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
    )
    op.create_index(op.f("ix_workspaces_organization_id"), "workspaces", ["organization_id"], unique=False)

    op.create_table(
        "agentSessions",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("agent_slug", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_agentSessions_organization_id")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_agentSessions_user_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agentSessions")),
    )
    op.create_index(
        op.f("ix_agentSessions_organization_id"), "agentSessions", ["organization_id"], unique=False
    )

    op.create_table(
        "data_subject_requests",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("request_type", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=50), server_default=sa.text("'pending'"), nullable=False),
        sa.Column(
            "request_details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "response_details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "request_type IN ('access', 'rectification', 'erasure', 'portability', 'restriction', 'objection')",
            name=op.f("ck_data_subject_requests_request_type"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'in_progress', 'completed', 'rejected')",
            name=op.f("ck_data_subject_requests_status"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_data_subject_requests_organization_id")
        ),
        sa.ForeignKeyConstraint(
            ["processed_by"], ["users.id"], name=op.f("fk_data_subject_requests_processed_by")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_data_subject_requests_user_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_subject_requests")),
    )
    op.create_index("idx_dsr_status", "data_subject_requests", ["status", "deadline"], unique=False)
    op.create_index("idx_dsr_user", "data_subject_requests", ["organization_id", "user_id"], unique=False)

    op.create_table(
        "dead_man_switch_config",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("admin_user_id", sa.Uuid(), nullable=False),
        sa.Column("heartbeat_interval_hours", sa.Integer(), server_default=sa.text("(24)"), nullable=False),
        sa.Column("grace_period_hours", sa.Integer(), server_default=sa.text("(48)"), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("doom_timer_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=True),
        sa.Column(
            "escalation_contacts",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("recovery_instructions", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["admin_user_id"], ["users.id"], name=op.f("fk_dead_man_switch_config_admin_user_id")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_dead_man_switch_config_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_man_switch_config")),
    )
    op.create_index("idx_dms_org", "dead_man_switch_config", ["organization_id", "is_active"], unique=False)

    op.create_table(
        "fallback_billing",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("billing_period_start", sa.Date(), nullable=False),
        sa.Column("billing_period_end", sa.Date(), nullable=False),
        sa.Column("total_fallback_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("total_fallback_requests", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "total_cost_usd", sa.Numeric(precision=12, scale=4), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("billing_model", sa.String(length=50), nullable=False),
        sa.Column("bundle_tokens_remaining", sa.BigInteger(), nullable=True),
        sa.Column("invoice_id", sa.Uuid(), nullable=True),
        sa.Column("invoice_status", sa.String(length=50), server_default=sa.text("'pending'"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "billing_model IN ('pay_as_you_go', 'token_bundle', 'unlimited_tier', 'hybrid')",
            name=op.f("ck_fallback_billing_billing_model"),
        ),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], name=op.f("fk_fallback_billing_invoice_id")),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_fallback_billing_organization_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fallback_billing")),
        sa.UniqueConstraint(
            "organization_id",
            "billing_period_start",
            "billing_period_end",
            name=op.f("uq_fallback_billing_organization_id"),
        ),
    )
    op.create_index(
        "idx_fallback_billing_org",
        "fallback_billing",
        ["organization_id", "billing_period_start"],
        unique=False,
    )

    op.create_table(
        "security_anomalies",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("anomaly_type", sa.String(length=100), nullable=False),
        sa.Column("severity", sa.String(length=20), nullable=False),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("ml_confidence", sa.Numeric(precision=5, scale=4), nullable=True),
        sa.Column("auto_blocked", sa.Boolean(), server_default=sa.false(), nullable=True),
        sa.Column("reviewed_by", sa.Uuid(), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=50), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "anomaly_type IN ('login_location', 'access_pattern', 'data_exfiltration', 'privilege_escalation', 'api_abuse', 'credential_stuffing', 'behavioral_mismatch', 'time_anomaly', 'volume_spike')",
            name=op.f("ck_security_anomalies_anomaly_type"),
        ),
        sa.CheckConstraint(
            "severity IN ('low', 'medium', 'high', 'critical')", name=op.f("ck_security_anomalies_severity")
        ),
        sa.ForeignKeyConstraint(
            ["reviewed_by"], ["users.id"], name=op.f("fk_security_anomalies_reviewed_by")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_anomalies")),
    )
    op.create_index(
        "idx_anomaly_org",
        "security_anomalies",
        ["organization_id", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index(
        "idx_anomaly_severity",
        "security_anomalies",
        ["severity", sa.literal_column("created_at DESC")],
        unique=False,
    )

    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sessions_user_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_user_id"), "sessions", ["user_id"], unique=False)

    op.create_table(
        "tenant_llm_config",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=True),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("api_key_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("api_endpoint", sa.String(length=500), nullable=True),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=True),
        sa.Column("rate_limit_rpm", sa.Integer(), server_default=sa.text("(60)"), nullable=True),
        sa.Column("rate_limit_tpm", sa.Integer(), server_default=sa.text("(100000)"), nullable=True),
        sa.Column("max_tokens", sa.Integer(), server_default=sa.text("(4096)"), nullable=True),
        sa.Column(
            "temperature", sa.Numeric(precision=3, scale=2), server_default=sa.text("(0.7)"), nullable=True
        ),
        sa.Column(
            "config_json",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            server_default=sa.text("'{}'"),
            nullable=True,
        ),
        sa.Column("last_health_check", sa.DateTime(timezone=True), nullable=True),
        sa.Column("health_status", sa.String(length=50), server_default=sa.text("'unknown'"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "provider IN ('openai', 'anthropic', 'gemini', 'azure_openai', 'mistral', 'cohere', 'groq', 'deepseek', 'together', 'fireworks', 'ollama', 'custom', 'fine_tuned')",
            name=op.f("ck_tenant_llm_config_provider"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_tenant_llm_config_organization_id")
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_tenant_llm_config_workspace_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_llm_config")),
        sa.UniqueConstraint(
            "organization_id", "provider", "model_id", name=op.f("uq_tenant_llm_config_organization_id")
        ),
    )
    op.create_index(
        "idx_tenant_llm_active",
        "tenant_llm_config",
        ["organization_id", "is_active", "priority"],
        unique=False,
    )

    op.create_table(
        "trustedDevices",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("device_fingerprint", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_trustedDevices_user_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trustedDevices")),
    )
    op.create_index(op.f("ix_trustedDevices_user_id"), "trustedDevices", ["user_id"], unique=False)

    op.create_table(
        "user_consents",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("consent_type", sa.String(length=100), nullable=False),
        sa.Column("consent_given", sa.Boolean(), nullable=False),
        sa.Column("consent_version", sa.String(length=50), nullable=False),
        sa.Column(
            "ip_address", sa.String(length=45).with_variant(postgresql.INET(), "postgresql"), nullable=True
        ),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("given_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "consent_type IN ('data_processing', 'ai_training', 'federated_learning', 'analytics', 'marketing', 'third_party_sharing', 'cross_product_data_flow', 'vamn_contribution', 'agent_conversation_logging', 'document_scanning')",
            name=op.f("ck_user_consents_consent_type"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_user_consents_organization_id")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_consents_user_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_consents")),
        sa.UniqueConstraint(
            "organization_id", "user_id", "consent_type", name=op.f("uq_user_consents_organization_id")
        ),
    )
    op.create_index("idx_consents_type", "user_consents", ["consent_type", "consent_given"], unique=False)
    op.create_index("idx_consents_user", "user_consents", ["organization_id", "user_id"], unique=False)

    op.create_table(
        "behavioral_biometrics",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("typing_pattern_hash", sa.String(length=128), nullable=True),
        sa.Column("mouse_dynamics_hash", sa.String(length=128), nullable=True),
        sa.Column("navigation_pattern_hash", sa.String(length=128), nullable=True),
        sa.Column("device_fingerprint", sa.String(length=256), nullable=True),
        sa.Column(
            "risk_score", sa.Numeric(precision=5, scale=2), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("anomaly_detected", sa.Boolean(), server_default=sa.false(), nullable=True),
        sa.Column(
            "anomaly_reasons",
            sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_behavioral_biometrics_session_id")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_behavioral_biometrics_user_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_behavioral_biometrics")),
    )
    op.create_index(
        "idx_biometrics_anomaly",
        "behavioral_biometrics",
        ["anomaly_detected"],
        unique=False,
        postgresql_where=sa.text("anomaly_detected = true"),
        sqlite_where=sa.text("anomaly_detected = 1"),
    )
    op.create_index(
        "idx_biometrics_user",
        "behavioral_biometrics",
        ["user_id", sa.literal_column("created_at DESC")],
        unique=False,
    )

    op.create_table(
        "llm_usage_log",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("agent_slug", sa.String(length=100), nullable=True),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("llm_config_id", sa.Uuid(), nullable=True),
        sa.Column("fine_tuned_model_id", sa.Uuid(), nullable=True),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("is_fallback", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column(
            "total_tokens",
            sa.Integer(),
            sa.Computed("input_tokens + output_tokens", persisted=True),
            nullable=True,
        ),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("estimated_cost_usd", sa.Numeric(precision=10, scale=6), nullable=True),
        sa.Column("request_type", sa.String(length=100), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), server_default=sa.false(), nullable=True),
        sa.Column("status", sa.String(length=50), nullable=False),
        sa.Column("error_code", sa.String(length=50), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["fine_tuned_model_id"],
            ["fine_tuned_model_config.id"],
            name=op.f("fk_llm_usage_log_fine_tuned_model_id"),
        ),
        sa.ForeignKeyConstraint(
            ["llm_config_id"], ["tenant_llm_config.id"], name=op.f("fk_llm_usage_log_llm_config_id")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_llm_usage_log_organization_id")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["agentSessions.id"], name=op.f("fk_llm_usage_log_session_id")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_llm_usage_log_user_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_usage_log")),
    )
    op.create_index(
        "idx_llm_usage_agent",
        "llm_usage_log",
        ["agent_slug", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index(
        "idx_llm_usage_fallback",
        "llm_usage_log",
        ["is_fallback", sa.literal_column("created_at DESC")],
        unique=False,
        postgresql_where=sa.text("is_fallback = true"),
        sqlite_where=sa.text("is_fallback = 1"),
    )
    op.create_index(
        "idx_llm_usage_org",
        "llm_usage_log",
        ["organization_id", sa.literal_column("created_at DESC")],
        unique=False,
    )

    op.create_table(
        "vamn_inference_log",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("agent_slug", sa.String(length=100), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("head_type", sa.String(length=50), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("gpu_memory_mb", sa.Integer(), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), server_default=sa.false(), nullable=True),
        sa.Column("status", sa.String(length=50), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_vamn_inference_log_organization_id")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["agentSessions.id"], name=op.f("fk_vamn_inference_log_session_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vamn_inference_log")),
    )
    op.create_index(
        "idx_vamn_inference_agent",
        "vamn_inference_log",
        ["agent_slug", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index(
        "idx_vamn_inference_org",
        "vamn_inference_log",
        ["organization_id", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index("idx_vamn_inference_status", "vamn_inference_log", ["status"], unique=False)

    op.create_table(
        "zero_trust_access_log",
        sa.Column("id", sa.Uuid(), server_default=gen_random_uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=True),
        sa.Column("resource_requested", sa.String(length=500), nullable=False),
        sa.Column("access_decision", sa.String(length=20), nullable=False),
        sa.Column("trust_score", sa.Numeric(precision=5, scale=2), nullable=False),
        sa.Column(
            "factors_evaluated",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("challenge_type", sa.String(length=50), nullable=True),
        sa.Column("challenge_passed", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True),
        sa.CheckConstraint(
            "access_decision IN ('allow', 'deny', 'challenge')",
            name=op.f("ck_zero_trust_access_log_access_decision"),
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["trustedDevices.id"], name=op.f("fk_zero_trust_access_log_device_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_zero_trust_access_log")),
    )
    op.create_index(
        "idx_zt_access_user",
        "zero_trust_access_log",
        ["user_id", sa.literal_column("created_at DESC")],
        unique=False,
    )
    _seed_agent_routing()


def _seed_agent_routing() -> None:
    # The spec's 12 agents, frozen here as they were when this revision was written.
    routing = sa.table(
        "agent_vamn_routing",
        sa.column("id", sa.Uuid()),
        sa.column("agent_slug", sa.String()),
        sa.column("primary_head", sa.String()),
        sa.column("secondary_heads", sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")),
        sa.column(
            "routing_rules", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
        ),
    )
    op.bulk_insert(
        routing,
        [
            {
                "id": uuid.uuid4(),
                "agent_slug": slug,
                "primary_head": head,
                "secondary_heads": secondary,
                "routing_rules": {"use_cases": use_cases},
            }
            for slug, head, secondary, use_cases in AGENT_ROUTING_SEED
        ],
    )


AGENT_ROUTING_SEED: list[tuple[str, str, list[str] | None, list[str]]] = [
    ("luca", "quantitative", ["semantic"], ["tax_calculation", "financial_analysis"]),
    ("parity", "citation", ["semantic"], ["legal_drafting", "compliance_docs"]),
    ("cadence", "semantic", None, ["workflow_design"]),
    ("forma", "semantic", None, ["form_generation"]),
    ("echo", "semantic", None, ["template_generation"]),
    ("scribe", "semantic", None, ["email_drafting"]),
    ("relay", "semantic", None, ["email_to_task"]),
    ("lynk", "semantic", None, ["message_to_task"]),
    ("trace", "semantic", None, ["resume_parsing"]),
    ("radar", "semantic", None, ["activity_analysis"]),
    ("omnispectra", "quantitative", None, ["workload_forecasting"]),
    ("onboard", "semantic", None, ["employee_onboarding"]),
]


def downgrade() -> None:
    op.drop_index("idx_zt_access_user", table_name="zero_trust_access_log")

    op.drop_table("zero_trust_access_log")
    op.drop_index("idx_vamn_inference_status", table_name="vamn_inference_log")
    op.drop_index("idx_vamn_inference_org", table_name="vamn_inference_log")
    op.drop_index("idx_vamn_inference_agent", table_name="vamn_inference_log")

    op.drop_table("vamn_inference_log")
    op.drop_index("idx_llm_usage_org", table_name="llm_usage_log")
    op.drop_index("idx_llm_usage_fallback", table_name="llm_usage_log")
    op.drop_index("idx_llm_usage_agent", table_name="llm_usage_log")

    op.drop_table("llm_usage_log")
    op.drop_index("idx_biometrics_user", table_name="behavioral_biometrics")
    op.drop_index("idx_biometrics_anomaly", table_name="behavioral_biometrics")

    op.drop_table("behavioral_biometrics")
    op.drop_index("idx_consents_user", table_name="user_consents")
    op.drop_index("idx_consents_type", table_name="user_consents")

    op.drop_table("user_consents")
    op.drop_index(op.f("ix_trustedDevices_user_id"), table_name="trustedDevices")

    op.drop_table("trustedDevices")
    op.drop_index("idx_tenant_llm_active", table_name="tenant_llm_config")

    op.drop_table("tenant_llm_config")
    op.drop_index(op.f("ix_sessions_user_id"), table_name="sessions")

    op.drop_table("sessions")
    op.drop_index("idx_anomaly_severity", table_name="security_anomalies")
    op.drop_index("idx_anomaly_org", table_name="security_anomalies")

    op.drop_table("security_anomalies")
    op.drop_index("idx_fallback_billing_org", table_name="fallback_billing")

    op.drop_table("fallback_billing")
    op.drop_index("idx_dms_org", table_name="dead_man_switch_config")

    op.drop_table("dead_man_switch_config")
    op.drop_index("idx_dsr_user", table_name="data_subject_requests")
    op.drop_index("idx_dsr_status", table_name="data_subject_requests")

    op.drop_table("data_subject_requests")
    op.drop_index(op.f("ix_agentSessions_organization_id"), table_name="agentSessions")

    op.drop_table("agentSessions")
    op.drop_index(op.f("ix_workspaces_organization_id"), table_name="workspaces")

    op.drop_table("workspaces")
    op.drop_index(op.f("ix_users_organization_id"), table_name="users")

    op.drop_table("users")
    op.drop_index(op.f("ix_invoices_organization_id"), table_name="invoices")

    op.drop_table("invoices")
    op.drop_index("idx_hsm_org", table_name="hsm_key_registry")

    op.drop_table("hsm_key_registry")
    op.drop_index("idx_fine_tuned_purpose", table_name="fine_tuned_model_config")
    op.drop_index("idx_fine_tuned_org", table_name="fine_tuned_model_config")

    op.drop_table("fine_tuned_model_config")
    op.drop_index("idx_federated_round", table_name="federated_learning_contributions")
    op.drop_index("idx_federated_org", table_name="federated_learning_contributions")

    op.drop_table("federated_learning_contributions")
    op.drop_table("vamn_model_registry")
    op.drop_index("idx_threat_indicator", table_name="threat_intelligence")
    op.drop_index("idx_threat_active", table_name="threat_intelligence")

    op.drop_table("threat_intelligence")
    op.drop_table("organizations")
    op.drop_index("idx_audit_org", table_name="immutable_audit_log")
    op.drop_index("idx_audit_hash", table_name="immutable_audit_log")

    op.drop_table("immutable_audit_log")
    op.drop_table("agent_vamn_routing")
