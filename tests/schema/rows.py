"""Minimal valid rows for every spec table, so constraint tests change exactly one thing at a time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from schema.base import Base
from schema.models import load_all

load_all()  # rows for every table: every model registered


@dataclass
class Refs:
    organization_id: uuid.UUID
    user_id: uuid.UUID
    session_id: uuid.UUID
    agent_session_id: uuid.UUID
    device_id: uuid.UUID
    workspace_id: uuid.UUID
    invoice_id: uuid.UUID


def table(name: str) -> sa.Table:
    return Base.metadata.tables[name]


def insert(connection: Connection, name: str, row: dict[str, Any]) -> None:
    connection.execute(table(name).insert().values(**row))


def make_refs(connection: Connection) -> Refs:
    """One organization with one of everything the spec tables reference."""
    org, user = uuid.uuid4(), uuid.uuid4()
    refs = Refs(org, user, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    insert(connection, "organizations", {"id": org, "name": f"org-{org.hex[:8]}"})
    insert(connection, "users", {"id": user, "organization_id": org, "email": f"{user.hex[:8]}@example.com"})
    insert(connection, "sessions", {"id": refs.session_id, "user_id": user})
    insert(
        connection,
        "agentSessions",
        {"id": refs.agent_session_id, "organization_id": org, "agent_slug": "luca"},
    )
    insert(connection, "trustedDevices", {"id": refs.device_id, "user_id": user, "device_fingerprint": "fp"})
    insert(connection, "workspaces", {"id": refs.workspace_id, "organization_id": org, "name": "main"})
    insert(connection, "invoices", {"id": refs.invoice_id, "organization_id": org})
    return refs


def _unique() -> str:
    return uuid.uuid4().hex[:12]


NOW = datetime(2026, 1, 16, tzinfo=UTC)

VALID_ROWS: dict[str, Callable[[Refs], dict[str, Any]]] = {
    "organizations": lambda r: {"name": f"org-{_unique()}"},
    "vamn_model_registry": lambda r: {
        "model_name": f"m-{_unique()}",
        "model_version": "1",
        "head_type": "semantic",
        "weights_checksum": "0" * 64,
    },
    "vamn_inference_log": lambda r: {
        "organization_id": r.organization_id,
        "agent_slug": "luca",
        "session_id": r.agent_session_id,
        "head_type": "quantitative",
        "input_tokens": 3,
        "output_tokens": 4,
        "latency_ms": 5,
        "status": "success",
    },
    "federated_learning_contributions": lambda r: {
        "organization_id": r.organization_id,
        "model_type": "time_estimation",
        "contribution_type": "time_estimation",
        "gradient_checksum": "a" * 64,
        "contribution_weight": Decimal("1.5"),
        "privacy_budget_consumed": Decimal("0.25"),
        "aggregation_round": 1,
    },
    "agent_vamn_routing": lambda r: {"agent_slug": f"agent-{_unique()}", "primary_head": "semantic"},
    "tenant_llm_config": lambda r: {
        "organization_id": r.organization_id,
        "workspace_id": r.workspace_id,
        "provider": "openai",
        "display_name": "OpenAI",
        "model_id": f"gpt-{_unique()}",
    },
    "fine_tuned_model_config": lambda r: {
        "organization_id": r.organization_id,
        "model_name": "tax",
        "base_provider": "openai",
        "base_model": "gpt-4",
        "deployment_type": "hosted",
        "model_purpose": "tax_assistant",
        "version": "1",
    },
    "llm_usage_log": lambda r: {
        "organization_id": r.organization_id,
        "user_id": r.user_id,
        "session_id": r.agent_session_id,
        "provider": "openai",
        "model_id": "gpt-4",
        "input_tokens": 10,
        "output_tokens": 32,
        "latency_ms": 100,
        "status": "success",
    },
    "fallback_billing": lambda r: {
        "organization_id": r.organization_id,
        "billing_period_start": date(2026, 1, 1) + timedelta(days=int(_unique()[:4], 16) % 3000),
        "billing_period_end": date(2036, 2, 1),
        "billing_model": "pay_as_you_go",
        "invoice_id": r.invoice_id,
    },
    "hsm_key_registry": lambda r: {
        "organization_id": None,
        "key_name": "k",
        "key_vault_uri": "file:///kek",
        "key_version": "1",
        "key_purpose": "signing",
    },
    "behavioral_biometrics": lambda r: {"user_id": r.user_id, "session_id": r.session_id},
    "immutable_audit_log": lambda r: {
        "organization_id": r.organization_id,
        "action": "test",
        "resource_type": "test",
        "action_data": {},
        "previous_hash": "0" * 64,
        "record_hash": "1" * 64,
    },
    "security_anomalies": lambda r: {
        "organization_id": r.organization_id,
        "anomaly_type": "api_abuse",
        "severity": "low",
        "details": {},
    },
    "zero_trust_access_log": lambda r: {
        "organization_id": r.organization_id,
        "user_id": r.user_id,
        "device_id": r.device_id,
        "resource_requested": "/",
        "access_decision": "allow",
        "trust_score": Decimal("90.5"),
        "factors_evaluated": {},
    },
    "threat_intelligence": lambda r: {
        "indicator_type": "ip",
        "indicator_value": "192.0.2.1",
        "threat_type": "botnet",
        "severity": "high",
        "source": "test",
        "confidence": Decimal("50"),
        "first_seen": NOW,
        "last_seen": NOW,
    },
    "dead_man_switch_config": lambda r: {
        "organization_id": r.organization_id,
        "admin_user_id": r.user_id,
        "escalation_contacts": [],
    },
    "user_consents": lambda r: {
        "organization_id": r.organization_id,
        "user_id": r.user_id,
        "consent_type": "federated_learning",
        "consent_given": True,
        "consent_version": "1",
    },
    "data_subject_requests": lambda r: {
        "organization_id": r.organization_id,
        "user_id": r.user_id,
        "request_type": "access",
        "request_details": {},
        "deadline": NOW,
    },
}
