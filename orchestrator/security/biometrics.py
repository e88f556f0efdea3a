"""Behavioural biometrics: a session's numeric summaries against the user's own baseline.

A client (the web app) sends, once per session, **summaries only** — keystroke interval and hold
statistics, mouse speed/acceleration/curvature/click rate, and the navigation sequence as small
route-category codes — never raw keystrokes or coordinates. They become:

- the spec's hash columns of ``behavioral_biometrics`` (``typing_pattern_hash``,
  ``mouse_dynamics_hash``, ``navigation_pattern_hash``): HMAC-SHA256 of the quantized group under
  ``ACCUTE_BIOMETRICS_HASH_KEY`` (a plain hash of a few rounded numbers could be inverted by trying
  them all); ``device_fingerprint`` is the SHA-256 of what the client sent, so the raw fingerprint
  is not kept and anyone holding the raw value can match it;
- a ``risk_score`` from 0 to 100 with ``anomaly_reasons``, against the user's baseline
  (``behavioral_baselines``: per feature, Welford's running mean and sum of squares).

Scoring (``score``): each feature the baseline has seen in ``min_sessions`` sessions gets
``z = |x - mean| / max(std, 10 % of |mean|, the feature's floor)`` (the floors keep a very
regular user from scoring 50 sigma on a 2 ms change). ``risk = min(100, 100 x rms(z) / 6)``:
an ordinary session of the same person has z values around 1 (risk about 15-25), another person
typically 4-10 sigma on several features (risk 70-100). A fingerprint the user has not enrolled
(``trustedDevices``) adds 20 once the baseline exists. ``anomaly_detected`` is ``risk >=`` the
``biometric_mismatch`` rule's threshold (70), and such a session is also a ``behavioral_mismatch``
security anomaly for the user. Only sessions judged normal update the baseline, so an impostor
cannot drag the baseline towards itself by repeating.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from schema import security_anomalies
from schema.anomaly_policy import AnomalyPolicy
from schema.errors import InvalidInputError, NotFoundError
from schema.models import BehavioralBaseline, BehavioralBiometrics, TrustedDevice, UserSession
from schema.security_anomalies import Finding
from schema.timeutil import as_utc, utcnow

FEATURE_VERSION = 1
#: (name, floor of the spread in the feature's unit)
FEATURES: tuple[tuple[str, float], ...] = (
    ("keystroke.mean_interval_ms", 10.0),
    ("keystroke.std_interval_ms", 5.0),
    ("keystroke.mean_hold_ms", 5.0),
    ("keystroke.std_hold_ms", 3.0),
    ("keystroke.backspace_rate", 0.01),
    ("mouse.mean_speed_px_s", 20.0),
    ("mouse.std_speed_px_s", 20.0),
    ("mouse.mean_acceleration_px_s2", 100.0),
    ("mouse.mean_curvature", 0.02),
    ("mouse.click_rate_per_min", 1.0),
    ("navigation.length", 2.0),
    ("navigation.distinct_ratio", 0.05),
    ("navigation.transition_entropy", 0.1),
    ("navigation.mean_dwell_s", 2.0),
)
RISK_FULL_Z = 6.0
UNKNOWN_DEVICE_POINTS = 20.0
REASON_Z = 3.0


class KeystrokeSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean_interval_ms: float = Field(ge=0, le=5_000)
    std_interval_ms: float = Field(ge=0, le=5_000)
    mean_hold_ms: float = Field(ge=0, le=2_000)
    std_hold_ms: float = Field(ge=0, le=2_000)
    backspace_rate: float = Field(ge=0, le=1)
    samples: int = Field(ge=1, le=1_000_000)


class MouseSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean_speed_px_s: float = Field(ge=0, le=50_000)
    std_speed_px_s: float = Field(ge=0, le=50_000)
    mean_acceleration_px_s2: float = Field(ge=0, le=1_000_000)
    mean_curvature: float = Field(ge=0, le=100)
    click_rate_per_min: float = Field(ge=0, le=1_000)
    samples: int = Field(ge=1, le=10_000_000)


class NavigationSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sequence: list[int] = Field(
        min_length=1, max_length=500, description="Route-category codes 0-1023, in order."
    )
    mean_dwell_s: float = Field(ge=0, le=86_400)

    @model_validator(mode="after")
    def _codes(self) -> NavigationSummary:
        if any(not 0 <= code <= 1023 for code in self.sequence):
            raise ValueError("navigation codes must be between 0 and 1023")
        return self


class BiometricSession(BaseModel):
    """One session's behaviour, as numeric summaries (never raw keystrokes or coordinates)."""

    model_config = ConfigDict(extra="forbid")

    session_id: uuid.UUID | None = None
    keystroke: KeystrokeSummary | None = None
    mouse: MouseSummary | None = None
    navigation: NavigationSummary | None = None
    device_fingerprint: str | None = Field(
        default=None, min_length=8, max_length=256, pattern=r"^[\x21-\x7e]+$"
    )

    @model_validator(mode="after")
    def _something(self) -> BiometricSession:
        if self.keystroke is None and self.mouse is None and self.navigation is None:
            raise ValueError("send at least one of keystroke, mouse or navigation")
        return self


def transition_entropy(sequence: list[int]) -> float:
    """Shannon entropy (nats) of the sequence's page-to-page transitions (0 for fewer than two)."""
    pairs = Counter(itertools.pairwise(sequence))
    total = sum(pairs.values())
    return -sum(c / total * math.log(c / total) for c in pairs.values()) if total else 0.0


def vector(body: BiometricSession) -> list[float | None]:
    """The session's features in ``FEATURES`` order (None where the group was not sent)."""
    k, m, n = body.keystroke, body.mouse, body.navigation
    values: list[float | None] = []
    values += (
        [k.mean_interval_ms, k.std_interval_ms, k.mean_hold_ms, k.std_hold_ms, k.backspace_rate]
        if k
        else [None] * 5
    )
    values += (
        [
            m.mean_speed_px_s,
            m.std_speed_px_s,
            m.mean_acceleration_px_s2,
            m.mean_curvature,
            m.click_rate_per_min,
        ]
        if m
        else [None] * 5
    )
    values += (
        [
            float(len(n.sequence)),
            len(set(n.sequence)) / len(n.sequence),
            transition_entropy(n.sequence),
            n.mean_dwell_s,
        ]
        if n
        else [None] * 4
    )
    return values


@dataclass
class Baseline:
    """Welford state per feature."""

    counts: list[int]
    mean: list[float]
    m2: list[float]

    @classmethod
    def empty(cls) -> Baseline:
        size = len(FEATURES)
        return cls([0] * size, [0.0] * size, [0.0] * size)

    def update(self, values: list[float | None]) -> None:
        for i, x in enumerate(values):
            if x is None:
                continue
            self.counts[i] += 1
            delta = x - self.mean[i]
            self.mean[i] += delta / self.counts[i]
            self.m2[i] += delta * (x - self.mean[i])

    def std(self, i: int) -> float:
        return math.sqrt(self.m2[i] / (self.counts[i] - 1)) if self.counts[i] > 1 else 0.0


@dataclass(frozen=True)
class Score:
    risk: float
    reasons: list[str]
    compared: int
    z: dict[str, float]


def score(baseline: Baseline, values: list[float | None], min_sessions: int, unknown_device: bool) -> Score:
    """Risk 0-100 of ``values`` against ``baseline`` (see the module docstring)."""
    zs: dict[str, float] = {}
    for i, x in enumerate(values):
        name, floor = FEATURES[i]
        if x is None or baseline.counts[i] < min_sessions:
            continue
        spread = max(baseline.std(i), 0.1 * abs(baseline.mean[i]), floor)
        zs[name] = abs(x - baseline.mean[i]) / spread
    if not zs:
        seen = max(baseline.counts) if baseline.counts else 0
        return Score(0.0, [f"baseline: {min(seen, min_sessions)} of {min_sessions} sessions"], 0, {})
    rms = math.sqrt(sum(z * z for z in zs.values()) / len(zs))
    risk = 100.0 * rms / RISK_FULL_Z
    reasons = [
        f"{name} is {z:.1f} sigma from the user's baseline"
        for name, z in sorted(zs.items(), key=lambda item: -item[1])
        if z >= REASON_Z
    ]
    if unknown_device:
        risk += UNKNOWN_DEVICE_POINTS
        reasons.append("device not enrolled for this user")
    return Score(round(min(risk, 100.0), 2), reasons, len(zs), {k: round(v, 3) for k, v in zs.items()})


def _quantized(values: list[float | None]) -> str:
    return ",".join("-" if v is None else f"{v:.3g}" for v in values)


class PatternHasher:
    """HMAC-SHA256 of quantized feature groups (hex, 64 characters)."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key or secrets.token_bytes(32)

    def __call__(self, label: str, payload: str) -> str:
        return hmac.new(self.key, f"{label}|{payload}".encode(), hashlib.sha256).hexdigest()


def fingerprint_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _session(session: Session, user_id: uuid.UUID, session_id: uuid.UUID | None) -> uuid.UUID:
    """The user's live login session ``session_id``, or a new one when none is named."""
    if session_id is None:
        row = UserSession(id=uuid.uuid4(), user_id=user_id)
        session.add(row)
        session.flush()
        return row.id
    found = session.get(UserSession, session_id)
    if found is None or found.user_id != user_id:
        raise NotFoundError(f"no session {session_id} of this user; omit session_id to open one")
    if found.expires_at is not None and as_utc(found.expires_at) <= utcnow():
        raise InvalidInputError(f"session {session_id} has expired; omit session_id to open a new one")
    return found.id


def submit(
    session: Session,
    *,
    organization_id: uuid.UUID,
    user_id: uuid.UUID,
    body: BiometricSession,
    policy: AnomalyPolicy,
    hasher: PatternHasher,
    min_sessions: int,
) -> dict[str, Any]:
    """Score the session, write its ``behavioral_biometrics`` row, update the baseline if normal."""
    session_id = _session(session, user_id, body.session_id)
    values = vector(body)
    row = session.get(BehavioralBaseline, user_id, with_for_update=True)
    baseline = (
        Baseline(list(row.counts), list(row.mean), list(row.m2))
        if row is not None and row.feature_version == FEATURE_VERSION
        else Baseline.empty()
    )
    fingerprint = fingerprint_digest(body.device_fingerprint) if body.device_fingerprint else None
    unknown_device = False
    if body.device_fingerprint is not None and baseline.counts and max(baseline.counts) >= min_sessions:
        enrolled = session.scalar(
            select(TrustedDevice.id)
            .where(
                TrustedDevice.user_id == user_id,
                TrustedDevice.device_fingerprint.in_([body.device_fingerprint, fingerprint]),
            )
            .limit(1)
        )
        unknown_device = enrolled is None
    result = score(baseline, values, min_sessions, unknown_device)
    rule = policy.rule("biometric_mismatch")
    anomaly = result.compared > 0 and result.risk >= rule.threshold
    record = BehavioralBiometrics(
        id=uuid.uuid4(),
        user_id=user_id,
        session_id=session_id,
        typing_pattern_hash=hasher("typing", _quantized(values[0:5])) if body.keystroke else None,
        mouse_dynamics_hash=hasher("mouse", _quantized(values[5:10])) if body.mouse else None,
        navigation_pattern_hash=(
            hasher("navigation", ",".join(map(str, body.navigation.sequence))) if body.navigation else None
        ),
        device_fingerprint=fingerprint,
        risk_score=result.risk,
        anomaly_detected=anomaly,
        anomaly_reasons=result.reasons,
        created_at=utcnow(),
    )
    session.add(record)
    if not anomaly:
        baseline.update(values)
        if row is None:
            session.add(
                BehavioralBaseline(
                    user_id=user_id,
                    organization_id=organization_id,
                    feature_version=FEATURE_VERSION,
                    sessions=1,
                    counts=baseline.counts,
                    mean=baseline.mean,
                    m2=baseline.m2,
                )
            )
        else:
            row.feature_version = FEATURE_VERSION
            row.sessions += 1
            row.counts, row.mean, row.m2 = baseline.counts, baseline.mean, baseline.m2
    else:
        security_anomalies.record(
            session,
            Finding(
                detector="biometric_mismatch",
                anomaly_type=rule.anomaly_type,
                severity=rule.severity,
                subject=f"user:{user_id}",
                organization_id=organization_id,
                user_id=user_id,
                evidence={
                    "biometrics_id": str(record.id),
                    "session_id": str(session_id),
                    "risk_score": result.risk,
                    "reasons": result.reasons[:10],
                },
                confidence=result.risk / 100.0,
                block_s=rule.block_s if rule.auto_block else None,
                window_s=rule.window_s,
            ),
        )
    session.flush()
    return {
        "id": str(record.id),
        "session_id": str(session_id),
        "risk_score": result.risk,
        "anomaly_detected": anomaly,
        "anomaly_reasons": result.reasons,
        "features_compared": result.compared,
        "baseline_sessions": (row.sessions if row is not None else (0 if anomaly else 1)),
    }
