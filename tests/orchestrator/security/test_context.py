"""What the gate reads from the other layers' tables: blocks, anomalies, behaviour, devices."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Engine

from orchestrator.security.context import load_context
from schema import directory
from schema.db import transaction
from schema.models import BehavioralBiometrics, SecurityAnomaly, TrustedDevice, UserSession


def test_context_reads_blocks_anomalies_behaviour_and_devices(engine: Engine) -> None:
    # Prepare: one organization, two users; rows as anomaly detection, biometrics and enrolment write them.
    with transaction(engine) as session:
        org = directory.create_organization(session, "ctx firm").id
        ana = directory.create_user(session, org, "ana@ctx.example").id
        bob = directory.create_user(session, org, "bob@ctx.example").id
        login = UserSession(user_id=ana)
        session.add(login)
        session.flush()
        session.add_all(
            [
                SecurityAnomaly(  # an address block (credential stuffing): that address only
                    organization_id=org,
                    anomaly_type="credential_stuffing",
                    severity="high",
                    details={"address": "127.0.0.9"},
                    auto_blocked=True,
                ),
                SecurityAnomaly(  # a user block
                    organization_id=org,
                    user_id=bob,
                    anomaly_type="privilege_escalation",
                    severity="critical",
                    details={},
                    auto_blocked=True,
                ),
                SecurityAnomaly(  # resolved: ignored
                    organization_id=org,
                    user_id=ana,
                    anomaly_type="api_abuse",
                    severity="critical",
                    details={},
                    auto_blocked=True,
                    resolution="false_positive",
                ),
                SecurityAnomaly(  # an organization-wide spike, not blocking
                    organization_id=org, anomaly_type="volume_spike", severity="medium", details={}
                ),
                BehavioralBiometrics(
                    user_id=ana, session_id=login.id, risk_score=Decimal("72.5"), anomaly_detected=True
                ),
                TrustedDevice(user_id=ana, device_fingerprint="fp-laptop"),
            ]
        )

    # Execute
    context = load_context(engine, window_s=3600)

    # Assert
    assert context.blocked(None, None, "127.0.0.9") and not context.blocked(ana, org, "127.0.0.10")
    assert context.blocked(bob, org, None)
    assert context.anomalies(ana, org) == ("medium",)  # the address's one counts for the address only
    assert context.anomalies(ana, org, "127.0.0.9") == ("medium", "high")
    assert sorted(context.anomalies(bob, org)) == ["critical", "medium"]
    assert context.behaviour[ana] == (72.5, True)
    assert context.device(ana, "fp-laptop")[0] is True
    assert context.device(ana, "fp-phone") == (False, None)
    assert context.device(ana, None) == (None, None)
    assert not context.empty
