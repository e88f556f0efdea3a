"""What each anomaly detector looks for and what happens when it fires: data, not code.

One table of rules, one per detector, with safe defaults below; ``ACCUTE_ANOMALY_POLICY_FILE``
names a TOML file whose ``[detector]`` tables override any of a rule's keys, e.g.::

    [credential_stuffing]
    threshold = 20          # failed tokens from one address ...
    window_s = 60           # ... within this many seconds
    auto_block = true       # then refuse that address (only it) ...
    block_s = 900           # ... for 15 minutes

    [fl_update_outlier]
    auto_block = false      # record, but let the node into the next round

It lives in ``schema`` because both the HTTP service (``orchestrator.security``) and the round
driver (``fl_server``) read it, and neither may import the other.

Keys of every rule: ``severity`` (low | medium | high | critical), ``auto_block`` (write the
anomaly with ``auto_blocked`` and refuse its subject), ``block_s`` (for how long), ``threshold``
and ``window_s`` (the detector's own trigger; see each detector's docstring for their meaning).
Rate detectors also read ``z`` (robust z-score), ``ratio`` (times the baseline median),
``min_count`` (never fire below this many events in a minute) and ``min_history`` (minutes of
baseline before judging anything).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from schema.errors import ConfigurationError
from schema.vocab import ANOMALY_TYPES, SEVERITIES


@dataclass(frozen=True)
class AnomalyRule:
    """One detector's trigger and action."""

    anomaly_type: str
    severity: str
    threshold: float
    window_s: int
    auto_block: bool = False
    block_s: int = 900
    z: float = 6.0
    ratio: float = 3.0
    min_count: int = 30
    min_history: int = 30


#: The defaults, chosen so that ordinary use never fires (BENCHMARKS.md: the false-positive rate
#: of the rate detectors on a replay of normal traffic) and an attack fires within its window.
DEFAULT_RULES: dict[str, AnomalyRule] = {
    # 20 bad tokens a minute from one address: a client with a stale token retries a few times,
    # a stuffing run tries hundreds. Only that address is blocked, for 15 minutes.
    "credential_stuffing": AnomalyRule(
        "credential_stuffing", "high", threshold=20, window_s=60, auto_block=True, block_s=900
    ),
    # One forbidden probe is recorded (a mistyped org id happens); 10 within 10 minutes blocks
    # the token's subject for 15 minutes.
    "privilege_escalation": AnomalyRule(
        "privilege_escalation", "high", threshold=10, window_s=600, auto_block=True, block_s=900
    ),
    # An organization's requests per minute far above its own rolling baseline.
    "volume_spike": AnomalyRule("volume_spike", "medium", threshold=0, window_s=3600),
    # An organization's billed fallback tokens per minute far above its own rolling baseline.
    "api_abuse": AnomalyRule("api_abuse", "high", threshold=0, window_s=3600, min_count=5_000),
    # Usage/billing/export/DSR reads by one principal: 120 an hour or 50 000 rows an hour.
    "data_exfiltration": AnomalyRule(
        "data_exfiltration", "high", threshold=120, window_s=3600, min_count=50_000
    ),
    # A request in an hour of the day that held under 0.5 % of the organization's activity,
    # once the profile holds 2 000 requests.
    "time_anomaly": AnomalyRule("time_anomaly", "low", threshold=0.005, window_s=3600, min_history=2000),
    # A node whose updates were rejected as invalid 3 times within the last 5 rounds.
    "fl_repeated_rejections": AnomalyRule(
        "access_pattern", "high", threshold=3, window_s=5, auto_block=True, block_s=86_400
    ),
    # An update the validator rejected as an outlier (norm above the bound, a weight the tenant
    # cannot hold) is always recorded. It blocks the tenant (24 h, until an admin resolves it) when
    # the norm or weight is at least `ratio` = 4 x its bound (a x50 boost is ~10x the default
    # bound; an honest local-DP node exceeds its DP-aware bound with probability 1e-6 per reply,
    # and 4x it essentially never), or at the tenant's `threshold` = 2nd outlier within the last
    # `window_s` = 5 rounds (rounds here). `threshold = 1` blocks on every outlier.
    "fl_update_outlier": AnomalyRule(
        "behavioral_mismatch", "high", threshold=2, window_s=5, auto_block=True, block_s=86_400, ratio=4.0
    ),
    # An accepted update the robust aggregator found far from the round's others (norm far outside
    # the round's distribution): recorded, not blocked by default (an honest tenant with unusual,
    # non-IID data can be far from the median; an admin decides).
    "fl_aggregator_outlier": AnomalyRule(
        "behavioral_mismatch", "medium", threshold=0, window_s=86_400, auto_block=False, block_s=86_400
    ),
    # A round's epsilon increment above 3x the median of the tenant's earlier increments (3 at least).
    "fl_budget_burn": AnomalyRule("volume_spike", "medium", threshold=3.0, window_s=86_400, min_history=3),
    # A behavioural session whose risk score reaches 70 (of 100).
    "biometric_mismatch": AnomalyRule("behavioral_mismatch", "medium", threshold=70, window_s=3600),
}

_OVERRIDABLE = {f.name for f in fields(AnomalyRule)} - {"anomaly_type"}


@dataclass(frozen=True)
class AnomalyPolicy:
    rules: dict[str, AnomalyRule]

    def rule(self, detector: str) -> AnomalyRule:
        return self.rules[detector]


def _override(name: str, rule: AnomalyRule, values: Any) -> AnomalyRule:
    if not isinstance(values, dict):
        raise ConfigurationError(f"anomaly policy: [{name}] must be a table of keys")
    unknown = set(values) - _OVERRIDABLE
    if unknown:
        raise ConfigurationError(
            f"anomaly policy: [{name}] has unknown key(s) {sorted(unknown)}; use {sorted(_OVERRIDABLE)}"
        )
    updated = replace(rule, **values)
    if updated.severity not in SEVERITIES:
        raise ConfigurationError(f"anomaly policy: [{name}] severity must be one of {', '.join(SEVERITIES)}")
    for key in ("threshold", "window_s", "block_s", "z", "ratio", "min_count", "min_history"):
        value = getattr(updated, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigurationError(f"anomaly policy: [{name}] {key} must be a number >= 0")
    if not isinstance(updated.auto_block, bool):
        raise ConfigurationError(f"anomaly policy: [{name}] auto_block must be true or false")
    return updated


def load_policy(path: Path | None = None) -> AnomalyPolicy:
    """The defaults, overridden by the TOML file at ``path`` when given."""
    rules = dict(DEFAULT_RULES)
    if path is None:
        return AnomalyPolicy(rules)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"anomaly policy file {path} cannot be read ({exc.strerror}); fix the path"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"anomaly policy file {path} is not valid TOML: {exc}") from None
    for name, values in data.items():
        if name not in rules:
            raise ConfigurationError(
                f"anomaly policy: unknown detector [{name}]; use one of {', '.join(sorted(rules))}"
            )
        rules[name] = _override(name, rules[name], values)
    assert all(r.anomaly_type in ANOMALY_TYPES for r in rules.values())
    return AnomalyPolicy(rules)
