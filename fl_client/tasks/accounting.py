"""The accounting model types: time estimation, document templates, compliance checks.

The category lists here are the contract between a tenant's data and the model's input layer;
the synthetic generator in simulations/ draws from the same lists, so they live in one place.
"""

from __future__ import annotations

import math

import torch

from fl_client.tasks.common import classification_task, mean_absolute_error, mlp, squared_error
from fl_client.tasks.features import (
    ClassLabel,
    Cyclic,
    Flag,
    HashedText,
    Numeric,
    OneHot,
    RecordEncoder,
    RegressionTarget,
)
from fl_client.tasks.spec import TaskSpec, TrainingDefaults

SERVICES: tuple[str, ...] = (
    "bookkeeping",
    "payroll",
    "individual_tax",
    "business_tax",
    "audit",
    "advisory",
    "sales_tax",
)
STAFF_LEVELS: tuple[str, ...] = ("junior", "senior", "manager", "partner")
CLIENT_SIZES: tuple[str, ...] = ("micro", "small", "medium", "large")

DOCUMENT_TYPES: tuple[str, ...] = (
    "engagement_letter",
    "invoice",
    "tax_organizer",
    "bank_statement",
    "payroll_summary",
    "w2_form",
    "form_1099",
    "receipt",
    "meeting_minutes",
    "management_letter",
)

ENTITY_TYPES: tuple[str, ...] = (
    "individual",
    "sole_proprietor",
    "partnership",
    "s_corp",
    "c_corp",
    "nonprofit",
)
JURISDICTIONS: tuple[str, ...] = ("federal", "state", "local")
COMPLIANCE_RULES: tuple[str, ...] = (
    "revenue_recognition",
    "auditor_independence",
    "sales_tax_nexus",
    "payroll_withholding",
    "record_retention",
    "estimated_tax",
    "no_issue",
)

TEXT_DIM = 256
FINDING_TEXT_DIM = 128

TIME_ESTIMATION_ENCODER = RecordEncoder(
    fields=(
        OneHot("service", SERVICES),
        OneHot("staff_level", STAFF_LEVELS),
        OneHot("client_size", CLIENT_SIZES),
        Numeric("documents", lambda v: math.log1p(max(v, 0.0)) / 5.0),
        Numeric("complexity", lambda v: (v - 3.0) / 2.0),
        Flag("recurring"),
        Cyclic("month", 12),
    ),
    label=RegressionTarget("hours", lambda v: math.log1p(max(v, 0.0))),
)

DOCUMENT_TEMPLATES_ENCODER = RecordEncoder(
    fields=(HashedText("text", TEXT_DIM),),
    label=ClassLabel("document_type", DOCUMENT_TYPES),
)

COMPLIANCE_CHECKS_ENCODER = RecordEncoder(
    fields=(
        HashedText("finding", FINDING_TEXT_DIM),
        OneHot("entity_type", ENTITY_TYPES),
        OneHot("jurisdiction", JURISDICTIONS),
        Numeric("amount", lambda v: math.log1p(max(v, 0.0)) / 15.0),
    ),
    label=ClassLabel("rule", COMPLIANCE_RULES),
)

TIME_ESTIMATION = TaskSpec(
    name="time_estimation",
    head_type="quantitative",
    contribution_type="time_estimation",
    description="Regression of log hours a client task takes from its service, staff, client and workload.",
    encoder=TIME_ESTIMATION_ENCODER,
    model_factory=mlp(TIME_ESTIMATION_ENCODER.dim, 32, 1),
    loss=squared_error,
    metric=mean_absolute_error(torch.expm1, "hours"),
    defaults=TrainingDefaults(lr=0.1, sample_rate=0.1, steps=300, clip_norm=1.0),
)

DOCUMENT_TEMPLATES = classification_task(
    "document_templates",
    "semantic",
    "document_templates",
    "Document-type classification from the document's text (hashed bag of words).",
    DOCUMENT_TEMPLATES_ENCODER,
)

COMPLIANCE_CHECKS = classification_task(
    "compliance_checks",
    "citation",
    "compliance_checks",
    "Which compliance rule a finding cites, from its text, entity type, jurisdiction and amount.",
    COMPLIANCE_CHECKS_ENCODER,
)
