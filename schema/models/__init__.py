"""Every table of the spec plus the minimal platform tables they reference.

Importing this package registers all models on ``Base.metadata``.
"""

from schema.models.consent import DataSubjectRequest, UserConsent
from schema.models.consent_lineage import (
    ConsentEvent,
    ConsentSnapshot,
    ConsentSnapshotMember,
    ConsentSnapshotUse,
)
from schema.models.federation import (
    FlNodeBinding,
    FlPublishedModel,
    FlRoundOutcome,
    FlRoundSummary,
    FlRun,
)
from schema.models.llm import FallbackBilling, FineTunedModelConfig, LlmUsageLog, TenantLlmConfig
from schema.models.orchestrator import LlmInflight, LlmRequest, OrganizationDataKey, ServiceSigningKey
from schema.models.personal_data import PersonalDataKey
from schema.models.privacy import PrivacyBudget, PrivacyLedgerEvent
from schema.models.security import (
    BehavioralBiometrics,
    DeadManSwitchConfig,
    HsmKeyRegistry,
    ImmutableAuditLog,
    SecurityAnomaly,
    ThreatIntelligence,
    ZeroTrustAccessLog,
)
from schema.models.tenancy import (
    AgentSession,
    Invoice,
    Organization,
    TrustedDevice,
    User,
    UserSession,
    Workspace,
)
from schema.models.vamn import (
    AgentVamnRouting,
    FederatedLearningContribution,
    VamnInferenceLog,
    VamnModelRegistry,
)

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

__all__ = [
    "SPEC_TABLES",
    "AgentSession",
    "AgentVamnRouting",
    "BehavioralBiometrics",
    "ConsentEvent",
    "ConsentSnapshot",
    "ConsentSnapshotMember",
    "ConsentSnapshotUse",
    "DataSubjectRequest",
    "DeadManSwitchConfig",
    "FallbackBilling",
    "FederatedLearningContribution",
    "FineTunedModelConfig",
    "FlNodeBinding",
    "FlPublishedModel",
    "FlRoundOutcome",
    "FlRoundSummary",
    "FlRun",
    "HsmKeyRegistry",
    "ImmutableAuditLog",
    "Invoice",
    "LlmInflight",
    "LlmRequest",
    "LlmUsageLog",
    "Organization",
    "OrganizationDataKey",
    "PersonalDataKey",
    "PrivacyBudget",
    "PrivacyLedgerEvent",
    "SecurityAnomaly",
    "ServiceSigningKey",
    "TenantLlmConfig",
    "ThreatIntelligence",
    "TrustedDevice",
    "User",
    "UserConsent",
    "UserSession",
    "VamnInferenceLog",
    "VamnModelRegistry",
    "Workspace",
    "ZeroTrustAccessLog",
]
