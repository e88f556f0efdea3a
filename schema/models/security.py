"""Security tables (spec §3.2): keys, biometrics, anomalies, zero trust, threats, DMS (the audit
chain's table is in ``schema.models.audit_log``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
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
    func,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, in_list, ordered_index, updated_at, uuid_pk

# The audit chain's table has its own module (every audited write needs it, nothing else here).
from schema.models.audit_log import ImmutableAuditLog  # noqa: F401

# The tables these foreign keys name (users, organizations, sessions, trustedDevices) must be on the
# metadata whenever this module is, or a flush of a lone security row cannot resolve them.
from schema.models.tenancy import TrustedDevice, UserSession  # noqa: F401
from schema.types import JSONBType, TextArrayType, TimestampTZ, UUIDType
from schema.vocab import ACCESS_DECISIONS, ANOMALY_TYPES, INDICATOR_TYPES, KEY_PURPOSES, SEVERITIES


class HsmKeyRegistry(Base):
    """The current version of each key, per organization (NULL = system-wide) and purpose."""

    __tablename__ = "hsm_key_registry"
    __table_args__ = (
        CheckConstraint(in_list("key_purpose", KEY_PURPOSES), name="key_purpose"),
        UniqueConstraint("organization_id", "key_purpose"),
        Index("idx_hsm_org", "organization_id", "is_active"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    key_name: Mapped[str] = mapped_column(String(100))
    key_vault_uri: Mapped[str] = mapped_column(String(500))
    key_version: Mapped[str] = mapped_column(String(100))
    key_purpose: Mapped[str] = mapped_column(String(100))
    algorithm: Mapped[str] = mapped_column(
        String(50), default="RSA-OAEP-256", server_default=text("'RSA-OAEP-256'")
    )
    is_active: Mapped[bool | None] = mapped_column(Boolean, server_default=true())
    rotation_due_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    last_rotated_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    created_at: Mapped[datetime | None] = created_at()


class BehavioralBiometrics(Base):
    """Per-session behaviour hashes and the risk score derived from them."""

    __tablename__ = "behavioral_biometrics"
    __table_args__ = (
        Index(
            "idx_biometrics_anomaly",
            "anomaly_detected",
            postgresql_where=text("anomaly_detected = true"),
            sqlite_where=text("anomaly_detected = 1"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"))
    session_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("sessions.id"))
    typing_pattern_hash: Mapped[str | None] = mapped_column(String(128))
    mouse_dynamics_hash: Mapped[str | None] = mapped_column(String(128))
    navigation_pattern_hash: Mapped[str | None] = mapped_column(String(128))
    device_fingerprint: Mapped[str | None] = mapped_column(String(256))
    risk_score: Mapped[Decimal] = mapped_column(Numeric(5, 2), default=Decimal(0), server_default=text("0"))
    anomaly_detected: Mapped[bool | None] = mapped_column(Boolean, server_default=false())
    anomaly_reasons: Mapped[list[str] | None] = mapped_column(TextArrayType)
    created_at: Mapped[datetime | None] = created_at()


class BehavioralBaseline(Base):
    """A user's running behavioural baseline (Welford mean and sum of squares per feature).

    Not in the spec: ``behavioral_biometrics`` keeps only hashes, from which no baseline can be
    computed; the numeric summaries a score needs live here, one row per user, never raw events.
    """

    __tablename__ = "behavioral_baselines"

    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"), index=True)
    feature_version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    sessions: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Per feature (``orchestrator.security.biometrics.FEATURES`` order): sessions that had it,
    #: running mean, running sum of squared deviations (Welford).
    counts: Mapped[list[int]] = mapped_column(JSONBType)
    mean: Mapped[list[float]] = mapped_column(JSONBType)
    m2: Mapped[list[float]] = mapped_column(JSONBType)
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class UserMfa(Base):
    """A user's TOTP second factor (RFC 6238), answering the zero-trust ``mfa`` challenge.

    Not in the spec (which lists MFA as a layer but gives it no table). The shared secret is
    stored only sealed under the user's personal data key (``schema.personal_data``, purpose
    ``totp_secret``): an erasure shreds the key and with it the factor. ``last_step`` is the
    RFC 6238 time step of the last accepted code: a code of that step or earlier is a replay.
    """

    __tablename__ = "user_mfa"

    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"), index=True)
    method: Mapped[str] = mapped_column(String(20), default="totp", server_default=text("'totp'"))
    secret_sealed: Mapped[str] = mapped_column(Text)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class SecurityGeneration(Base):
    """One row whose ``generation`` grows whenever a block is raised or an anomaly is resolved.

    Not in the spec. Every worker polls this one row (a primary-key read, off the request path)
    and reloads blocks when it changed, so a block or a resolution on one worker takes effect on
    the others within the poll interval; with Redis a published message wakes them at once.
    """

    __tablename__ = "security_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class SecurityAnomaly(Base):
    """A detected anomaly and its review."""

    __tablename__ = "security_anomalies"
    __table_args__ = (
        CheckConstraint(in_list("anomaly_type", ANOMALY_TYPES), name="anomaly_type"),
        CheckConstraint(in_list("severity", SEVERITIES), name="severity"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    anomaly_type: Mapped[str] = mapped_column(String(100))
    severity: Mapped[str] = mapped_column(String(20))
    details: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    ml_confidence: Mapped[Decimal | None] = mapped_column(Numeric(5, 4))
    auto_blocked: Mapped[bool | None] = mapped_column(Boolean, server_default=false())
    reviewed_by: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("users.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    resolution: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime | None] = created_at()


class ZeroTrustAccessLog(Base):
    """One access decision with the trust factors behind it."""

    __tablename__ = "zero_trust_access_log"
    __table_args__ = (CheckConstraint(in_list("access_decision", ACCESS_DECISIONS), name="access_decision"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    device_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, ForeignKey("trustedDevices.id"))
    resource_requested: Mapped[str] = mapped_column(String(500))
    access_decision: Mapped[str] = mapped_column(String(20))
    trust_score: Mapped[Decimal] = mapped_column(Numeric(5, 2))
    factors_evaluated: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    challenge_type: Mapped[str | None] = mapped_column(String(50))
    challenge_passed: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime | None] = created_at()


class ThreatIntelligence(Base):
    """An indicator of compromise from a feed."""

    __tablename__ = "threat_intelligence"
    __table_args__ = (
        CheckConstraint(in_list("indicator_type", INDICATOR_TYPES), name="indicator_type"),
        Index("idx_threat_indicator", "indicator_type", "indicator_value"),
        Index("idx_threat_active", "is_active", "indicator_type"),
        # An extension (migration 0019): one row per indicator and feed; ``threat import`` upserts on it.
        Index("uq_threat_indicator_source", "indicator_type", "indicator_value", "source", unique=True),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    indicator_type: Mapped[str] = mapped_column(String(50))
    indicator_value: Mapped[str] = mapped_column(String(500))
    threat_type: Mapped[str] = mapped_column(String(100))
    severity: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(100))
    confidence: Mapped[Decimal] = mapped_column(Numeric(5, 2))
    first_seen: Mapped[datetime] = mapped_column(TimestampTZ)
    last_seen: Mapped[datetime] = mapped_column(TimestampTZ)
    is_active: Mapped[bool | None] = mapped_column(Boolean, server_default=true())
    # "metadata" is reserved on declarative classes; the column keeps the spec's name.
    metadata_: Mapped[dict[str, Any] | None] = mapped_column(
        "metadata", JSONBType, server_default=text("'{}'")
    )
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()


class DeadManSwitchConfig(Base):
    """Heartbeat and escalation settings for an organization's admin (one row per organization).

    ``actions`` (an extension, migration 0016) names what the switch does when it fires
    (``orchestrator.security.dead_man_switch.ACTIONS``); ``escalation_contacts`` holds user ids of
    the organization, never addresses (the hub resolves them).
    """

    __tablename__ = "dead_man_switch_config"
    __table_args__ = (
        Index("idx_dms_org", "organization_id", "is_active"),
        Index("uq_dms_config_org", "organization_id", unique=True),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    admin_user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("users.id"))
    heartbeat_interval_hours: Mapped[int] = mapped_column(Integer, default=24, server_default=text("24"))
    grace_period_hours: Mapped[int] = mapped_column(Integer, default=48, server_default=text("48"))
    last_heartbeat: Mapped[datetime] = mapped_column(TimestampTZ, server_default=func.now())
    doom_timer_started_at: Mapped[datetime | None] = mapped_column(TimestampTZ)
    is_active: Mapped[bool | None] = mapped_column(Boolean, server_default=true())
    escalation_contacts: Mapped[Any] = mapped_column(JSONBType)
    recovery_instructions: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = created_at()
    updated_at: Mapped[datetime | None] = updated_at()
    actions: Mapped[list[str]] = mapped_column(JSONBType, server_default=text("'[]'"))


# Indexes with a descending column are built on the mapped columns (see ordered_index).
ordered_index("idx_biometrics_user", BehavioralBiometrics, "user_id", "created_at DESC")
ordered_index("idx_anomaly_org", SecurityAnomaly, "organization_id", "created_at DESC")
ordered_index("idx_anomaly_severity", SecurityAnomaly, "severity", "created_at DESC")
ordered_index("idx_zt_access_user", ZeroTrustAccessLog, "user_id", "created_at DESC")
