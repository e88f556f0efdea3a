"""Every table of the spec plus the minimal platform tables they reference.

A model's module is imported when one of its names is first used (``from schema.models import
User`` imports ``schema.models.tenancy`` only): a command pays for the tables it touches, not for
all ~40. There are no ``relationship()``s between models and foreign keys are resolved by name when
needed, so a partial set works. What needs every table on ``Base.metadata`` (Alembic, the
models-vs-migrations drift test) calls ``load_all()``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schema.models.audit_log import ImmutableAuditLog
    from schema.models.audit_signing import AuditChainAnchor, AuditReanchorSignature, AuditSigningKey
    from schema.models.consent import DataSubjectRequest, UserConsent
    from schema.models.consent_lineage import (
        ConsentEvent,
        ConsentSnapshot,
        ConsentSnapshotMember,
        ConsentSnapshotUse,
    )
    from schema.models.dead_man_switch import DeadManSwitchFiring
    from schema.models.federation import (
        FlNodeBinding,
        FlPublishedModel,
        FlRoundOutcome,
        FlRoundSummary,
        FlRun,
    )
    from schema.models.hub import HubOutbox
    from schema.models.hub_workflows import HubWorkflowExecution
    from schema.models.llm import FallbackBilling, FineTunedModelConfig, LlmUsageLog, TenantLlmConfig
    from schema.models.orchestrator import (
        LlmInflight,
        LlmRequest,
        OrganizationDataKey,
        ServiceSigningKey,
    )
    from schema.models.organization import Organization, User
    from schema.models.personal_data import PersonalDataKey
    from schema.models.privacy import PrivacyBudget, PrivacyBudgetAlert, PrivacyLedgerEvent
    from schema.models.security import (
        BehavioralBaseline,
        BehavioralBiometrics,
        DeadManSwitchConfig,
        HsmKeyRegistry,
        SecurityAnomaly,
        SecurityGeneration,
        ThreatIntelligence,
        UserMfa,
        ZeroTrustAccessLog,
    )
    from schema.models.tenancy import (
        AgentSession,
        Invoice,
        TrustedDevice,
        UserSession,
        Workspace,
    )
    from schema.models.vamn import (
        AgentVamnRouting,
        FederatedLearningContribution,
        VamnInferenceLog,
        VamnModelRegistry,
    )

#: The module under ``schema.models`` of each model.
MODEL_MODULES: dict[str, str] = {
    "AgentSession": "tenancy",
    "AgentVamnRouting": "vamn",
    "AuditChainAnchor": "audit_signing",
    "AuditReanchorSignature": "audit_signing",
    "AuditSigningKey": "audit_signing",
    "BehavioralBaseline": "security",
    "BehavioralBiometrics": "security",
    "ConsentEvent": "consent_lineage",
    "ConsentSnapshot": "consent_lineage",
    "ConsentSnapshotMember": "consent_lineage",
    "ConsentSnapshotUse": "consent_lineage",
    "DataSubjectRequest": "consent",
    "DeadManSwitchConfig": "security",
    "DeadManSwitchFiring": "dead_man_switch",
    "FallbackBilling": "llm",
    "FederatedLearningContribution": "vamn",
    "FineTunedModelConfig": "llm",
    "FlNodeBinding": "federation",
    "FlPublishedModel": "federation",
    "FlRoundOutcome": "federation",
    "FlRoundSummary": "federation",
    "FlRun": "federation",
    "HsmKeyRegistry": "security",
    "HubOutbox": "hub",
    "HubWorkflowExecution": "hub_workflows",
    "ImmutableAuditLog": "audit_log",
    "Invoice": "tenancy",
    "LlmInflight": "orchestrator",
    "LlmRequest": "orchestrator",
    "LlmUsageLog": "llm",
    "Organization": "organization",
    "OrganizationDataKey": "orchestrator",
    "PersonalDataKey": "personal_data",
    "PrivacyBudget": "privacy",
    "PrivacyBudgetAlert": "privacy",
    "PrivacyLedgerEvent": "privacy",
    "SecurityAnomaly": "security",
    "SecurityGeneration": "security",
    "ServiceSigningKey": "orchestrator",
    "TenantLlmConfig": "llm",
    "ThreatIntelligence": "security",
    "TrustedDevice": "tenancy",
    "User": "organization",
    "UserConsent": "consent",
    "UserMfa": "security",
    "UserSession": "tenancy",
    "VamnInferenceLog": "vamn",
    "VamnModelRegistry": "vamn",
    "Workspace": "tenancy",
    "ZeroTrustAccessLog": "security",
}

#: The 17 tables the spec defines (the rest are the minimal referenced ones).
SPEC_TABLES: tuple[str, ...] = (
    "vamn_model_registry",
    "vamn_inference_log",
    "federated_learning_contributions",
    "agent_vamn_routing",
    "tenant_llm_config",
    "fine_tuned_model_config",
    "llm_usage_log",
    "fallback_billing",
    "hsm_key_registry",
    "behavioral_biometrics",
    "immutable_audit_log",
    "security_anomalies",
    "zero_trust_access_log",
    "threat_intelligence",
    "dead_man_switch_config",
    "user_consents",
    "data_subject_requests",
)


def load_all() -> None:
    """Import every model module, registering every table (and index) on ``Base.metadata``."""
    for module in sorted(set(MODEL_MODULES.values())):
        importlib.import_module(f"schema.models.{module}")


def __getattr__(name: str) -> Any:
    module = MODEL_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'schema.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"schema.models.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "SPEC_TABLES",
    "AgentSession",
    "AgentVamnRouting",
    "AuditChainAnchor",
    "AuditReanchorSignature",
    "AuditSigningKey",
    "BehavioralBaseline",
    "BehavioralBiometrics",
    "ConsentEvent",
    "ConsentSnapshot",
    "ConsentSnapshotMember",
    "ConsentSnapshotUse",
    "DataSubjectRequest",
    "DeadManSwitchConfig",
    "DeadManSwitchFiring",
    "FallbackBilling",
    "FederatedLearningContribution",
    "FineTunedModelConfig",
    "FlNodeBinding",
    "FlPublishedModel",
    "FlRoundOutcome",
    "FlRoundSummary",
    "FlRun",
    "HsmKeyRegistry",
    "HubOutbox",
    "HubWorkflowExecution",
    "ImmutableAuditLog",
    "Invoice",
    "LlmInflight",
    "LlmRequest",
    "LlmUsageLog",
    "Organization",
    "OrganizationDataKey",
    "PersonalDataKey",
    "PrivacyBudget",
    "PrivacyBudgetAlert",
    "PrivacyLedgerEvent",
    "SecurityAnomaly",
    "SecurityGeneration",
    "ServiceSigningKey",
    "TenantLlmConfig",
    "ThreatIntelligence",
    "TrustedDevice",
    "User",
    "UserConsent",
    "UserMfa",
    "UserSession",
    "VamnInferenceLog",
    "VamnModelRegistry",
    "Workspace",
    "ZeroTrustAccessLog",
]
