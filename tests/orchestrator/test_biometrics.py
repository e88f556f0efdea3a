"""Behavioural biometrics through the running service: a baseline, then an impostor's session."""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import select

from orchestrator.security.biometrics import Baseline, score, transition_entropy
from schema.db import transaction
from schema.models import BehavioralBaseline, BehavioralBiometrics, SecurityAnomaly, TrustedDevice
from tests.orchestrator.test_security_anomalies import serve  # noqa: F401  (the fixture)

NAVIGATION = [1, 2, 3, 2, 4, 5, 2, 3]


def _session(
    rng: random.Random, *, typing_ms: float = 180.0, speed: float = 600.0, **extra: Any
) -> dict[str, Any]:
    """A session of one person: the same habits with a few percent of noise."""

    def jitter(value: float) -> float:
        return round(value * rng.uniform(0.95, 1.05), 3)

    return {
        "keystroke": {
            "mean_interval_ms": jitter(typing_ms),
            "std_interval_ms": jitter(typing_ms * 0.3),
            "mean_hold_ms": jitter(95.0),
            "std_hold_ms": jitter(20.0),
            "backspace_rate": jitter(0.04),
            "samples": 400,
        },
        "mouse": {
            "mean_speed_px_s": jitter(speed),
            "std_speed_px_s": jitter(speed * 0.4),
            "mean_acceleration_px_s2": jitter(3000.0),
            "mean_curvature": jitter(0.3),
            "click_rate_per_min": jitter(6.0),
            "samples": 2000,
        },
        "navigation": {"sequence": NAVIGATION, "mean_dwell_s": jitter(35.0)},
        **extra,
    }


def test_a_baseline_then_an_outlying_session_scores_high_and_is_flagged(serve: Any) -> None:  # noqa: F811
    # Prepare: a user with an enrolled device, and five ordinary sessions (the baseline).
    served = serve()
    org = served.org()
    user = served.user(org)
    with transaction(served.engine) as session:
        session.add(TrustedDevice(user_id=user, device_fingerprint="laptop-fp-0001"))
    headers = served.headers(org, "org_user", subject=str(user))
    rng = random.Random(7)
    url = f"/v1/orgs/{org}/biometrics/sessions"
    with served.client() as client:
        first = [
            client.post(url, json=_session(rng, device_fingerprint="laptop-fp-0001"), headers=headers)
            for _ in range(5)
        ]

        # Execute: one more ordinary session, then someone else's (slow typist, fast mouse, new device).
        normal = client.post(url, json=_session(rng, device_fingerprint="laptop-fp-0001"), headers=headers)
        impostor = client.post(
            url,
            json=_session(rng, typing_ms=420.0, speed=1500.0, device_fingerprint="other-device-99"),
            headers=headers,
        )
        raw = client.post(url, json={"keystroke": {"keys": "hunter2"}}, headers=headers)
        no_user = client.post(url, json=_session(rng), headers=served.headers(org, "org_user"))
        other_org = client.post(
            f"/v1/orgs/{served.org()}/biometrics/sessions", json=_session(rng), headers=headers
        )

    # Assert: the baseline sessions score 0 until 5 exist; normal stays low; the impostor is flagged.
    assert [r.status_code for r in first] == [201] * 5
    assert all(r.json()["risk_score"] == 0 for r in first)
    assert (
        normal.status_code == 201
        and normal.json()["risk_score"] < 40
        and not normal.json()["anomaly_detected"]
    )
    body = impostor.json()
    assert impostor.status_code == 201 and body["anomaly_detected"] and body["risk_score"] >= 70
    assert any("keystroke.mean_interval_ms" in r for r in body["anomaly_reasons"])
    assert "device not enrolled for this user" in body["anomaly_reasons"]
    assert raw.status_code == 422 and no_user.status_code == 422 and other_org.status_code == 403
    with transaction(served.engine) as session:
        rows = list(session.scalars(select(BehavioralBiometrics).where(BehavioralBiometrics.user_id == user)))
        baseline = session.get(BehavioralBaseline, user)
        anomalies = list(
            session.scalars(
                select(SecurityAnomaly).where(
                    SecurityAnomaly.user_id == user, SecurityAnomaly.anomaly_type == "behavioral_mismatch"
                )
            )
        )
        assert len(rows) == 7 and sum(bool(r.anomaly_detected) for r in rows) == 1
        assert all(r.typing_pattern_hash and len(r.typing_pattern_hash) == 64 for r in rows)
        assert all(r.session_id is not None and r.device_fingerprint != "laptop-fp-0001" for r in rows)
        # The impostor's session did not enter the baseline.
        assert baseline is not None and baseline.sessions == 6
        (anomaly,) = anomalies
        assert anomaly.anomaly_type == "behavioral_mismatch" and anomaly.details["subject"] == f"user:{user}"
        assert anomaly.organization_id == org


def test_scoring_is_zero_without_a_baseline_and_grows_with_distance() -> None:
    # Prepare: a baseline of 10 identical-habit sessions.
    baseline = Baseline.empty()
    rng = random.Random(1)
    for _ in range(10):
        baseline.update([100.0 * rng.uniform(0.97, 1.03)] + [None] * 13)

    # Execute / Assert
    assert score(Baseline.empty(), [100.0] + [None] * 13, 5, False).risk == 0
    near = score(baseline, [101.0] + [None] * 13, 5, False)
    far = score(baseline, [160.0] + [None] * 13, 5, False)
    farther = score(baseline, [400.0] + [None] * 13, 5, True)
    assert near.risk < far.risk <= farther.risk == 100
    assert transition_entropy([1]) == 0 and transition_entropy([1, 2, 1, 2]) > 0
