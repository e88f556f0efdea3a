"""The zero-trust decision: ``allow``, ``challenge`` or ``deny`` from the factors of one request.

Pure logic, no I/O: the caller (``orchestrator.security.gate`` for HTTP requests,
``orchestrator.security.node_admission`` for federated rounds) gathers the ``Factors`` from
in-memory indexes and hands them to ``decide`` with a ``Policy``.

The score. Every request starts at a trust score of 100; each factor that is not clean subtracts
the penalty the policy gives it (recent anomalies of the user/organization by severity, the latest
behavioural risk score, an unknown device, a request outside working hours, a low-severity threat
match). The outcome is ``allow`` at ``allow_at`` or above, ``challenge`` at ``challenge_at`` or
above, ``deny`` below. Some factors deny whatever the score (``hard_deny``): the token's role or
organization does not cover the resource, the client address or user agent is listed in threat
intelligence at ``deny_at_severity`` or worse, or an unresolved anomaly auto-blocked the user, the
organization or the address.

The policy is data: a TOML file (``policy.toml`` next to this module is the documented default;
``ACCUTE_ZERO_TRUST_POLICY_PATH`` names another). Its defaults allow a normal request (valid token,
matching role, nothing listed, no anomaly) with a score of 100.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schema.errors import ConfigurationError
from schema.vocab import SEVERITIES

ALLOW, CHALLENGE, DENY = "allow", "challenge", "deny"
DEFAULT_POLICY_PATH = Path(__file__).with_name("policy.toml")
_RANK = {name: i for i, name in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Factors:
    """What is known about one request when the policy decides (all read from memory)."""

    role_ok: bool = True
    """The token's organization and role cover the resource (platform admins always do)."""
    threat: str | None = None
    """The matched indicator, ``type:value`` (client address or user agent), or None."""
    threat_severity: str | None = None
    auto_blocked: bool = False
    """An unresolved anomaly with ``auto_blocked`` names the user, organization or address."""
    anomalies: tuple[str, ...] = ()
    """Severities of the user's and organization's unresolved recent anomalies."""
    biometric_risk: float | None = None
    """The user's latest behavioural ``risk_score`` (0-100), None without a recent session."""
    biometric_anomaly: bool = False
    device: bool | None = None
    """True: an enrolled device id was presented; False: an unknown one; None: none presented."""
    hour_utc: int = 12
    token_valid: bool = True
    """Always true when the policy runs (invalid tokens are a 401 before it); logged for completeness."""

    def as_json(self) -> dict[str, Any]:
        return {
            "token_valid": self.token_valid,
            "role_ok": self.role_ok,
            "threat": self.threat,
            "threat_severity": self.threat_severity,
            "auto_blocked": self.auto_blocked,
            "anomalies": list(self.anomalies),
            "biometric_risk": self.biometric_risk,
            "biometric_anomaly": self.biometric_anomaly,
            "known_device": self.device,
            "hour_utc": self.hour_utc,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: str
    trust_score: float
    """0-100: 100 minus the penalties (0 on a hard deny)."""
    reasons: tuple[str, ...] = ()
    challenge_type: str | None = None


@dataclass(frozen=True)
class Policy:
    """Thresholds and penalties (see ``policy.toml`` for what each means)."""

    allow_at: float = 60.0
    challenge_at: float = 30.0
    challenge_type: str = "mfa"
    deny_role_mismatch: bool = True
    deny_auto_blocked: bool = True
    deny_at_severity: str = "low"
    threat_penalty: float = 50.0
    anomaly_window_s: float = 86_400.0
    anomaly_penalty: dict[str, float] = field(
        default_factory=lambda: {"low": 5.0, "medium": 15.0, "high": 35.0, "critical": 60.0}
    )
    anomaly_max_penalty: float = 80.0
    biometric_risk_weight: float = 0.4
    biometric_anomaly_penalty: float = 25.0
    unknown_device_penalty: float = 10.0
    absent_device_penalty: float = 0.0
    start_hour_utc: int = 0
    end_hour_utc: int = 24
    off_hours_penalty: float = 15.0

    def __post_init__(self) -> None:
        if not 0 <= self.challenge_at <= self.allow_at <= 100:
            raise ConfigurationError(
                "zero-trust policy: need 0 <= challenge_at <= allow_at <= 100; fix [decision] in the policy file"
            )
        if self.deny_at_severity not in _RANK:
            raise ConfigurationError(
                f"zero-trust policy: deny_at_severity must be one of {', '.join(SEVERITIES)}"
            )
        if not (0 <= self.start_hour_utc <= 24 and 0 <= self.end_hour_utc <= 24):
            raise ConfigurationError("zero-trust policy: working hours are 0-24 (UTC)")

    @property
    def deny_rank(self) -> int:
        return _RANK[self.deny_at_severity]

    def working_hour(self, hour: int) -> bool:
        start, end = self.start_hour_utc, self.end_hour_utc
        if start == end or (start == 0 and end == 24):
            return True
        return start <= hour < end if start < end else hour >= start or hour < end


def decide(factors: Factors, policy: Policy) -> Decision:
    """The outcome for ``factors`` under ``policy`` (pure; a few microseconds)."""
    if not factors.token_valid:
        return Decision(DENY, 0.0, ("invalid_token",))
    if not factors.role_ok and policy.deny_role_mismatch:
        return Decision(DENY, 0.0, ("role_mismatch",))
    if factors.auto_blocked and policy.deny_auto_blocked:
        return Decision(DENY, 0.0, ("auto_blocked",))
    score = 100.0
    reasons: list[str] = []
    if factors.threat is not None:
        if _RANK.get(factors.threat_severity or "critical", len(SEVERITIES)) >= policy.deny_rank:
            return Decision(DENY, 0.0, ("threat_intelligence",))
        score -= policy.threat_penalty
        reasons.append("threat_intelligence")
    if factors.anomalies:
        penalty = sum(policy.anomaly_penalty.get(s, 0.0) for s in factors.anomalies)
        score -= min(penalty, policy.anomaly_max_penalty)
        reasons.append("recent_anomalies")
    if factors.biometric_risk:
        score -= factors.biometric_risk * policy.biometric_risk_weight
        reasons.append("behavioural_risk")
    if factors.biometric_anomaly:
        score -= policy.biometric_anomaly_penalty
        reasons.append("behavioural_anomaly")
    if factors.device is False and policy.unknown_device_penalty:
        score -= policy.unknown_device_penalty
        reasons.append("unknown_device")
    elif factors.device is None and policy.absent_device_penalty:
        score -= policy.absent_device_penalty
        reasons.append("no_device")
    if not policy.working_hour(factors.hour_utc):
        score -= policy.off_hours_penalty
        reasons.append("off_hours")
    score = max(score, 0.0)
    if score >= policy.allow_at:
        return Decision(ALLOW, score, tuple(reasons))
    if score >= policy.challenge_at:
        return Decision(CHALLENGE, score, tuple(reasons), policy.challenge_type)
    return Decision(DENY, score, tuple(reasons))


def _number(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"zero-trust policy: {key} must be a number")
    return float(value)


def load_policy(path: Path | None = None) -> Policy:
    """The policy in the TOML file at ``path`` (the packaged default when None)."""
    where = path or DEFAULT_POLICY_PATH
    try:
        data = tomllib.loads(where.read_text())
    except FileNotFoundError:
        raise ConfigurationError(
            f"zero-trust policy file {where} does not exist; fix ACCUTE_ZERO_TRUST_POLICY_PATH"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"zero-trust policy file {where} is not valid TOML: {exc}") from None
    base = Policy()
    decision = data.get("decision", {})
    hard = data.get("hard_deny", {})
    threats = data.get("threats", {})
    anomalies = data.get("anomalies", {})
    biometrics = data.get("biometrics", {})
    device = data.get("device", {})
    hours = data.get("time_of_day", {})
    penalties = anomalies.get("penalty", base.anomaly_penalty)
    if not isinstance(penalties, dict) or set(penalties) - set(SEVERITIES):
        raise ConfigurationError(f"zero-trust policy: anomalies.penalty keys are {', '.join(SEVERITIES)}")
    return Policy(
        allow_at=_number(decision, "allow_at", base.allow_at),
        challenge_at=_number(decision, "challenge_at", base.challenge_at),
        challenge_type=str(decision.get("challenge_type", base.challenge_type)),
        deny_role_mismatch=bool(hard.get("role_mismatch", base.deny_role_mismatch)),
        deny_auto_blocked=bool(hard.get("auto_blocked", base.deny_auto_blocked)),
        deny_at_severity=str(threats.get("deny_at_severity", base.deny_at_severity)),
        threat_penalty=_number(threats, "penalty", base.threat_penalty),
        anomaly_window_s=_number(anomalies, "window_s", base.anomaly_window_s),
        anomaly_penalty={k: _number(penalties, k, 0.0) for k in penalties},
        anomaly_max_penalty=_number(anomalies, "max_penalty", base.anomaly_max_penalty),
        biometric_risk_weight=_number(biometrics, "risk_weight", base.biometric_risk_weight),
        biometric_anomaly_penalty=_number(biometrics, "anomaly_penalty", base.biometric_anomaly_penalty),
        unknown_device_penalty=_number(device, "unknown_penalty", base.unknown_device_penalty),
        absent_device_penalty=_number(device, "absent_penalty", base.absent_device_penalty),
        start_hour_utc=int(_number(hours, "start_hour_utc", base.start_hour_utc)),
        end_hour_utc=int(_number(hours, "end_hour_utc", base.end_hour_utc)),
        off_hours_penalty=_number(hours, "off_hours_penalty", base.off_hours_penalty),
    )
