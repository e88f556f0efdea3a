"""The zero-trust decision and its policy file (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.security.zero_trust import ALLOW, CHALLENGE, DENY, Factors, Policy, decide, load_policy
from schema.errors import ConfigurationError


def test_the_default_policy_allows_a_normal_request_with_full_trust() -> None:
    # Prepare / Execute
    decision = decide(Factors(hour_utc=3), load_policy())

    # Assert
    assert (decision.outcome, decision.trust_score, decision.reasons) == (ALLOW, 100.0, ())


@pytest.mark.parametrize(
    ("factors", "outcome"),
    [
        (Factors(role_ok=False), DENY),
        (Factors(auto_blocked=True), DENY),
        (Factors(threat="ip:203.0.113.9", threat_severity="low"), DENY),
        (Factors(anomalies=("high",)), ALLOW),
        (Factors(anomalies=("critical",)), CHALLENGE),
        (Factors(anomalies=("critical", "critical")), DENY),  # 120 capped at 80: trust 20
        (Factors(biometric_risk=80.0, biometric_anomaly=True), CHALLENGE),
        (Factors(device=False), ALLOW),
    ],
)
def test_default_policy_outcomes(factors: Factors, outcome: str) -> None:
    assert decide(factors, load_policy()).outcome == outcome


def test_a_policy_file_changes_thresholds_and_hours(tmp_path: Path) -> None:
    # Prepare: working hours 8-18 UTC, anything off hours is challenged; low threats only penalised.
    path = tmp_path / "policy.toml"
    path.write_text(
        '[decision]\nallow_at = 90\nchallenge_at = 50\nchallenge_type = "captcha"\n'
        '[threats]\ndeny_at_severity = "high"\npenalty = 20\n'
        "[time_of_day]\nstart_hour_utc = 8\nend_hour_utc = 18\noff_hours_penalty = 30\n"
    )
    policy = load_policy(path)

    # Execute
    night = decide(Factors(hour_utc=23), policy)
    day = decide(Factors(hour_utc=9), policy)
    low_threat = decide(Factors(threat="user_agent:x", threat_severity="low", hour_utc=9), policy)

    # Assert
    assert (night.outcome, night.challenge_type, night.reasons) == (CHALLENGE, "captcha", ("off_hours",))
    assert day.outcome == ALLOW
    assert (low_threat.outcome, low_threat.trust_score) == (CHALLENGE, 80.0)


def test_wrapping_working_hours_and_bad_policies() -> None:
    night_shift = Policy(start_hour_utc=22, end_hour_utc=6)
    assert night_shift.working_hour(23) and night_shift.working_hour(2) and not night_shift.working_hour(12)
    with pytest.raises(ConfigurationError):
        Policy(allow_at=20, challenge_at=50)
    with pytest.raises(ConfigurationError):
        Policy(deny_at_severity="severe")


def test_a_missing_or_broken_policy_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[decision\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_policy(broken)
