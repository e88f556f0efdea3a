-- The SQL of the spec (shared/spec/000_9d9d5c62079fa03b.txt), verbatim: the contract for schema/.
-- tests/schema/test_spec_contract.py parses it and compares it with the migrated database.

-- =====================================================
-- VAMN INTEGRATION TABLES
-- =====================================================

-- VAMN model registry and health
CREATE TABLE vamn_model_registry (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    model_name VARCHAR(100) NOT NULL,
    model_version VARCHAR(50) NOT NULL,
    head_type VARCHAR(50) NOT NULL CHECK (head_type IN ('semantic', 'quantitative', 'citation')),
    weights_checksum VARCHAR(128) NOT NULL,
    is_active BOOLEAN DEFAULT true,
    deployment_status VARCHAR(50) DEFAULT 'pending',
    last_health_check TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(model_name, model_version, head_type)
);

-- VAMN inference tracking
CREATE TABLE vamn_inference_log (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    agent_slug VARCHAR(100) NOT NULL, -- 'luca', 'cadence', 'parity', etc.
    session_id UUID REFERENCES "agentSessions"(id),
    head_type VARCHAR(50) NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    gpu_memory_mb INTEGER,
    cache_hit BOOLEAN DEFAULT false,
    status VARCHAR(50) NOT NULL,
    error_message TEXT,
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Federated learning contributions from Accute
CREATE TABLE federated_learning_contributions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    model_type VARCHAR(100) NOT NULL,
    contribution_type VARCHAR(50) CHECK (contribution_type IN (
        'workflow_patterns', 'document_templates', 'tax_rules',
        'compliance_checks', 'time_estimation', 'workload_prediction'
    )),
    gradient_checksum VARCHAR(128) NOT NULL,
    contribution_weight DECIMAL(10,6) NOT NULL,
    privacy_budget_consumed DECIMAL(10,6) NOT NULL,
    aggregation_round INTEGER NOT NULL,
    status VARCHAR(50) DEFAULT 'pending',
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Agent → VAMN head mapping configuration
CREATE TABLE agent_vamn_routing (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_slug VARCHAR(100) NOT NULL UNIQUE,
    primary_head VARCHAR(50) NOT NULL CHECK (primary_head IN ('semantic', 'quantitative', 'citation')),
    secondary_heads TEXT[], -- For agents that use multiple heads
    routing_rules JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Seed agent routing data
INSERT INTO agent_vamn_routing (agent_slug, primary_head, secondary_heads, routing_rules) VALUES
('luca', 'quantitative', ARRAY['semantic'], '{"use_cases": ["tax_calculation", "financial_analysis"]}'),
('parity', 'citation', ARRAY['semantic'], '{"use_cases": ["legal_drafting", "compliance_docs"]}'),
('cadence', 'semantic', NULL, '{"use_cases": ["workflow_design"]}'),
('forma', 'semantic', NULL, '{"use_cases": ["form_generation"]}'),
('echo', 'semantic', NULL, '{"use_cases": ["template_generation"]}'),
('scribe', 'semantic', NULL, '{"use_cases": ["email_drafting"]}'),
('relay', 'semantic', NULL, '{"use_cases": ["email_to_task"]}'),
('lynk', 'semantic', NULL, '{"use_cases": ["message_to_task"]}'),
('trace', 'semantic', NULL, '{"use_cases": ["resume_parsing"]}'),
('radar', 'semantic', NULL, '{"use_cases": ["activity_analysis"]}'),
('omnispectra', 'quantitative', NULL, '{"use_cases": ["workload_forecasting"]}'),
('onboard', 'semantic', NULL, '{"use_cases": ["employee_onboarding"]}');

-- Indexes
CREATE INDEX idx_vamn_inference_org ON vamn_inference_log(organization_id, created_at DESC);
CREATE INDEX idx_vamn_inference_agent ON vamn_inference_log(agent_slug, created_at DESC);
CREATE INDEX idx_vamn_inference_status ON vamn_inference_log(status);
CREATE INDEX idx_federated_org ON federated_learning_contributions(organization_id);
CREATE INDEX idx_federated_round ON federated_learning_contributions(aggregation_round);

-- =====================================================
-- ENHANCED LLM CONFIGURATION TABLES
-- =====================================================

-- Drop existing llmConfigurations and recreate with enhanced schema
DROP TABLE IF EXISTS llmConfigurations CASCADE;

CREATE TABLE tenant_llm_config (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    workspace_id UUID REFERENCES workspaces(id), -- Optional workspace-level override
    provider VARCHAR(50) NOT NULL CHECK (provider IN (
        'openai', 'anthropic', 'gemini', 'azure_openai', 'mistral',
        'cohere', 'groq', 'deepseek', 'together', 'fireworks', 
        'ollama', 'custom', 'fine_tuned'
    )),
    display_name VARCHAR(100) NOT NULL,
    api_key_encrypted BYTEA, -- AES-256-GCM encrypted with organization DEK
    api_endpoint VARCHAR(500), -- Custom endpoint for Azure/Ollama/self-hosted
    model_id VARCHAR(200) NOT NULL, -- e.g., 'gpt-4-turbo', 'claude-3-opus'
    priority INTEGER NOT NULL DEFAULT 1, -- Lower = higher priority
    is_active BOOLEAN DEFAULT true,
    rate_limit_rpm INTEGER DEFAULT 60,
    rate_limit_tpm INTEGER DEFAULT 100000,
    max_tokens INTEGER DEFAULT 4096,
    temperature DECIMAL(3,2) DEFAULT 0.7,
    config_json JSONB DEFAULT '{}', -- Provider-specific config
    last_health_check TIMESTAMPTZ,
    health_status VARCHAR(50) DEFAULT 'unknown',
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(organization_id, provider, model_id)
);

-- Fine-tuned model configurations (client + FinACEverse internal)
CREATE TABLE fine_tuned_model_config (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID REFERENCES organizations(id), -- NULL = FinACEverse internal
    model_name VARCHAR(200) NOT NULL,
    base_provider VARCHAR(50) NOT NULL,
    base_model VARCHAR(200) NOT NULL,
    fine_tune_id VARCHAR(200), -- OpenAI ft-xxx, Anthropic fine-tune ID
    deployment_type VARCHAR(50) NOT NULL CHECK (deployment_type IN (
        'hosted', 'azure_ml', 'sagemaker', 'vertex', 'self_hosted'
    )),
    endpoint_url VARCHAR(500),
    api_key_encrypted BYTEA,
    model_purpose VARCHAR(100) NOT NULL, -- 'tax_assistant', 'legal_drafting', 'workflow_generation'
    training_data_hash VARCHAR(128),
    version VARCHAR(50) NOT NULL,
    is_active BOOLEAN DEFAULT true,
    is_vamn_predecessor BOOLEAN DEFAULT false, -- Models that feed into VAMN
    performance_metrics JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

-- LLM usage tracking with fallback identification
CREATE TABLE llm_usage_log (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    user_id UUID REFERENCES users(id),
    agent_slug VARCHAR(100), -- Which Accute agent made the call
    session_id UUID REFERENCES "agentSessions"(id),
    llm_config_id UUID REFERENCES tenant_llm_config(id),
    fine_tuned_model_id UUID REFERENCES fine_tuned_model_config(id),
    provider VARCHAR(50) NOT NULL,
    model_id VARCHAR(200) NOT NULL,
    is_fallback BOOLEAN NOT NULL DEFAULT false, -- TRUE = WE CHARGE
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    total_tokens INTEGER GENERATED ALWAYS AS (input_tokens + output_tokens) STORED,
    latency_ms INTEGER NOT NULL,
    estimated_cost_usd DECIMAL(10,6), -- Only populated for fallback
    request_type VARCHAR(100), -- 'agent_chat', 'workflow_generation', 'document_analysis'
    cache_hit BOOLEAN DEFAULT false,
    status VARCHAR(50) NOT NULL,
    error_code VARCHAR(50),
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Fallback billing aggregation
CREATE TABLE fallback_billing (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    billing_period_start DATE NOT NULL,
    billing_period_end DATE NOT NULL,
    total_fallback_tokens BIGINT NOT NULL DEFAULT 0,
    total_fallback_requests INTEGER NOT NULL DEFAULT 0,
    total_cost_usd DECIMAL(12,4) NOT NULL DEFAULT 0,
    billing_model VARCHAR(50) NOT NULL CHECK (billing_model IN (
        'pay_as_you_go', 'token_bundle', 'unlimited_tier', 'hybrid'
    )),
    bundle_tokens_remaining BIGINT, -- For token_bundle model
    invoice_id UUID REFERENCES invoices(id),
    invoice_status VARCHAR(50) DEFAULT 'pending',
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(organization_id, billing_period_start, billing_period_end)
);

-- Indexes for LLM tables
CREATE INDEX idx_tenant_llm_active ON tenant_llm_config(organization_id, is_active, priority);
CREATE INDEX idx_fine_tuned_org ON fine_tuned_model_config(organization_id, is_active);
CREATE INDEX idx_fine_tuned_purpose ON fine_tuned_model_config(model_purpose);
CREATE INDEX idx_llm_usage_org ON llm_usage_log(organization_id, created_at DESC);
CREATE INDEX idx_llm_usage_fallback ON llm_usage_log(is_fallback, created_at DESC) WHERE is_fallback = true;
CREATE INDEX idx_llm_usage_agent ON llm_usage_log(agent_slug, created_at DESC);
CREATE INDEX idx_fallback_billing_org ON fallback_billing(organization_id, billing_period_start);

-- =====================================================
-- SECURITY ENHANCEMENT TABLES
-- =====================================================

-- Azure HSM key management
CREATE TABLE hsm_key_registry (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID REFERENCES organizations(id), -- NULL = system-wide key
    key_name VARCHAR(100) NOT NULL,
    key_vault_uri VARCHAR(500) NOT NULL,
    key_version VARCHAR(100) NOT NULL,
    key_purpose VARCHAR(100) NOT NULL CHECK (key_purpose IN (
        'organization_dek', 'llm_api_keys', 'document_encryption', 
        'payment_credentials', 'signing', 'master_kek'
    )),
    algorithm VARCHAR(50) NOT NULL DEFAULT 'RSA-OAEP-256',
    is_active BOOLEAN DEFAULT true,
    rotation_due_at TIMESTAMPTZ,
    last_rotated_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(organization_id, key_purpose)
);

-- Behavioral biometrics tracking
CREATE TABLE behavioral_biometrics (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id),
    session_id UUID NOT NULL REFERENCES sessions(id),
    typing_pattern_hash VARCHAR(128),
    mouse_dynamics_hash VARCHAR(128),
    navigation_pattern_hash VARCHAR(128),
    device_fingerprint VARCHAR(256),
    risk_score DECIMAL(5,2) NOT NULL DEFAULT 0,
    anomaly_detected BOOLEAN DEFAULT false,
    anomaly_reasons TEXT[],
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Immutable audit log (append-only, blockchain-backed)
CREATE TABLE immutable_audit_log (
    id BIGSERIAL PRIMARY KEY,
    organization_id UUID NOT NULL,
    user_id UUID,
    action VARCHAR(100) NOT NULL,
    resource_type VARCHAR(100) NOT NULL,
    resource_id UUID,
    action_data JSONB NOT NULL,
    ip_address INET,
    user_agent TEXT,
    previous_hash VARCHAR(128) NOT NULL, -- Chain to previous record
    record_hash VARCHAR(128) NOT NULL,   -- SHA-256 of this record
    blockchain_tx_id VARCHAR(128),       -- Optional blockchain anchor
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Anomaly detection events
CREATE TABLE security_anomalies (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL,
    user_id UUID,
    anomaly_type VARCHAR(100) NOT NULL CHECK (anomaly_type IN (
        'login_location', 'access_pattern', 'data_exfiltration',
        'privilege_escalation', 'api_abuse', 'credential_stuffing',
        'behavioral_mismatch', 'time_anomaly', 'volume_spike'
    )),
    severity VARCHAR(20) NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    details JSONB NOT NULL,
    ml_confidence DECIMAL(5,4),
    auto_blocked BOOLEAN DEFAULT false,
    reviewed_by UUID REFERENCES users(id),
    reviewed_at TIMESTAMPTZ,
    resolution VARCHAR(50),
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Zero trust network access log
CREATE TABLE zero_trust_access_log (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL,
    user_id UUID NOT NULL,
    device_id UUID REFERENCES "trustedDevices"(id),
    resource_requested VARCHAR(500) NOT NULL,
    access_decision VARCHAR(20) NOT NULL CHECK (access_decision IN ('allow', 'deny', 'challenge')),
    trust_score DECIMAL(5,2) NOT NULL,
    factors_evaluated JSONB NOT NULL, -- Which trust factors were checked
    challenge_type VARCHAR(50), -- 'mfa', 'captcha', 'biometric', etc.
    challenge_passed BOOLEAN,
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Threat intelligence feeds
CREATE TABLE threat_intelligence (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    indicator_type VARCHAR(50) NOT NULL CHECK (indicator_type IN (
        'ip', 'domain', 'hash', 'email', 'url', 'user_agent'
    )),
    indicator_value VARCHAR(500) NOT NULL,
    threat_type VARCHAR(100) NOT NULL,
    severity VARCHAR(20) NOT NULL,
    source VARCHAR(100) NOT NULL,
    confidence DECIMAL(5,2) NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    is_active BOOLEAN DEFAULT true,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

-- Dead Man's Switch configuration
CREATE TABLE dead_man_switch_config (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    admin_user_id UUID NOT NULL REFERENCES users(id),
    heartbeat_interval_hours INTEGER NOT NULL DEFAULT 24,
    grace_period_hours INTEGER NOT NULL DEFAULT 48,
    last_heartbeat TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    doom_timer_started_at TIMESTAMPTZ,
    is_active BOOLEAN DEFAULT true,
    escalation_contacts JSONB NOT NULL, -- Emergency contacts
    recovery_instructions TEXT,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

-- Indexes for security tables
CREATE INDEX idx_hsm_org ON hsm_key_registry(organization_id, is_active);
CREATE INDEX idx_biometrics_user ON behavioral_biometrics(user_id, created_at DESC);
CREATE INDEX idx_biometrics_anomaly ON behavioral_biometrics(anomaly_detected) WHERE anomaly_detected = true;
CREATE INDEX idx_audit_org ON immutable_audit_log(organization_id, created_at DESC);
CREATE INDEX idx_audit_hash ON immutable_audit_log(record_hash);
CREATE INDEX idx_anomaly_org ON security_anomalies(organization_id, created_at DESC);
CREATE INDEX idx_anomaly_severity ON security_anomalies(severity, created_at DESC);
CREATE INDEX idx_zt_access_user ON zero_trust_access_log(user_id, created_at DESC);
CREATE INDEX idx_threat_indicator ON threat_intelligence(indicator_type, indicator_value);
CREATE INDEX idx_threat_active ON threat_intelligence(is_active, indicator_type);
CREATE INDEX idx_dms_org ON dead_man_switch_config(organization_id, is_active);

-- =====================================================
-- CONSENT MANAGEMENT TABLES
-- =====================================================

CREATE TABLE user_consents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    user_id UUID NOT NULL REFERENCES users(id),
    consent_type VARCHAR(100) NOT NULL CHECK (consent_type IN (
        'data_processing', 'ai_training', 'federated_learning',
        'analytics', 'marketing', 'third_party_sharing',
        'cross_product_data_flow', 'vamn_contribution',
        'agent_conversation_logging', 'document_scanning'
    )),
    consent_given BOOLEAN NOT NULL,
    consent_version VARCHAR(50) NOT NULL,
    ip_address INET,
    user_agent TEXT,
    given_at TIMESTAMPTZ,
    withdrawn_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(organization_id, user_id, consent_type)
);

CREATE TABLE data_subject_requests (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations(id),
    user_id UUID NOT NULL REFERENCES users(id),
    request_type VARCHAR(50) NOT NULL CHECK (request_type IN (
        'access', 'rectification', 'erasure', 'portability', 
        'restriction', 'objection'
    )),
    status VARCHAR(50) NOT NULL DEFAULT 'pending' CHECK (status IN (
        'pending', 'in_progress', 'completed', 'rejected'
    )),
    request_details JSONB NOT NULL,
    response_details JSONB,
    deadline TIMESTAMPTZ NOT NULL, -- GDPR: 30 days
    completed_at TIMESTAMPTZ,
    processed_by UUID REFERENCES users(id),
    created_at TIMESTAMPTZ DEFAULT NOW()
);

-- Indexes
CREATE INDEX idx_consents_user ON user_consents(organization_id, user_id);
CREATE INDEX idx_consents_type ON user_consents(consent_type, consent_given);
CREATE INDEX idx_dsr_status ON data_subject_requests(status, deadline);
CREATE INDEX idx_dsr_user ON data_subject_requests(organization_id, user_id);
