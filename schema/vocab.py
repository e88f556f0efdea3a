"""The allowed values of every CHECK constraint in the spec, in the spec's order.

Models build their CHECKs from these tuples and the edges validate input against them, so a value
list lives in exactly one place.
"""

from __future__ import annotations

VAMN_HEAD_TYPES: tuple[str, ...] = ("semantic", "quantitative", "citation")

CONTRIBUTION_TYPES: tuple[str, ...] = (
    "workflow_patterns",
    "document_templates",
    "tax_rules",
    "compliance_checks",
    "time_estimation",
    "workload_prediction",
)

LLM_PROVIDERS: tuple[str, ...] = (
    "openai",
    "anthropic",
    "gemini",
    "azure_openai",
    "mistral",
    "cohere",
    "groq",
    "deepseek",
    "together",
    "fireworks",
    "ollama",
    "custom",
    "fine_tuned",
)

DEPLOYMENT_TYPES: tuple[str, ...] = ("hosted", "azure_ml", "sagemaker", "vertex", "self_hosted")

BILLING_MODELS: tuple[str, ...] = ("pay_as_you_go", "token_bundle", "unlimited_tier", "hybrid")

KEY_PURPOSES: tuple[str, ...] = (
    "organization_dek",
    "llm_api_keys",
    "document_encryption",
    "payment_credentials",
    "signing",
    "master_kek",
)

ANOMALY_TYPES: tuple[str, ...] = (
    "login_location",
    "access_pattern",
    "data_exfiltration",
    "privilege_escalation",
    "api_abuse",
    "credential_stuffing",
    "behavioral_mismatch",
    "time_anomaly",
    "volume_spike",
)

SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")

ACCESS_DECISIONS: tuple[str, ...] = ("allow", "deny", "challenge")

INDICATOR_TYPES: tuple[str, ...] = ("ip", "domain", "hash", "email", "url", "user_agent")

CONSENT_TYPES: tuple[str, ...] = (
    "data_processing",
    "ai_training",
    "federated_learning",
    "analytics",
    "marketing",
    "third_party_sharing",
    "cross_product_data_flow",
    "vamn_contribution",
    "agent_conversation_logging",
    "document_scanning",
)

DSR_REQUEST_TYPES: tuple[str, ...] = (
    "access",
    "rectification",
    "erasure",
    "portability",
    "restriction",
    "objection",
)

DSR_STATUSES: tuple[str, ...] = ("pending", "in_progress", "completed", "rejected")

#: The consent text version a grant records unless told otherwise.
DEFAULT_CONSENT_VERSION = "1.0"

#: Requests still to be carried out (a restricting one excludes its user from snapshots meanwhile).
DSR_OPEN_STATUSES: tuple[str, ...] = ("pending", "in_progress")

#: The 12 agents of the spec's seed: (agent_slug, primary_head, secondary_heads, routing_rules).
AGENT_ROUTING_SEED: tuple[tuple[str, str, list[str] | None, dict[str, list[str]]], ...] = (
    ("luca", "quantitative", ["semantic"], {"use_cases": ["tax_calculation", "financial_analysis"]}),
    ("parity", "citation", ["semantic"], {"use_cases": ["legal_drafting", "compliance_docs"]}),
    ("cadence", "semantic", None, {"use_cases": ["workflow_design"]}),
    ("forma", "semantic", None, {"use_cases": ["form_generation"]}),
    ("echo", "semantic", None, {"use_cases": ["template_generation"]}),
    ("scribe", "semantic", None, {"use_cases": ["email_drafting"]}),
    ("relay", "semantic", None, {"use_cases": ["email_to_task"]}),
    ("lynk", "semantic", None, {"use_cases": ["message_to_task"]}),
    ("trace", "semantic", None, {"use_cases": ["resume_parsing"]}),
    ("radar", "semantic", None, {"use_cases": ["activity_analysis"]}),
    ("omnispectra", "quantitative", None, {"use_cases": ["workload_forecasting"]}),
    ("onboard", "semantic", None, {"use_cases": ["employee_onboarding"]}),
)
