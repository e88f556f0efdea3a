"""Consent changes and data subject requests reach the hub as events written with the change (ids only),
never for a change that rolled back or did not happen."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, select

from consent_gate import dsr, records
from schema.db import transaction
from schema.models import HubOutbox
from tests.consent_gate.conftest import TenantFactory


def _events(engine: Engine, org: uuid.UUID, prefix: str) -> list[HubOutbox]:
    with transaction(engine) as session:
        rows = list(
            session.scalars(
                select(HubOutbox)
                .where(HubOutbox.organization_id == org, HubOutbox.event_type.startswith(prefix))
                .order_by(HubOutbox.sequence)
            )
        )
        session.expunge_all()
    return rows


def test_grant_and_withdraw_emit_one_event_per_actual_change(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare: a user without consents.
    tenant = make_tenant("ConsentingCo", users=1, consents=())
    user = tenant.users[0]

    # Execute: grant, grant again (no change), withdraw.
    with transaction(engine) as session:
        granted = records.grant(session, tenant.id, user, "analytics", "2.1").consent
        assert not records.grant(session, tenant.id, user, "analytics", "2.1").changed
        records.withdraw(session, tenant.id, user, "analytics", reason="I changed my mind, Ada")

    # Assert
    events = _events(engine, tenant.id, "accute.consent.")
    assert [e.event_type for e in events] == ["accute.consent.granted", "accute.consent.withdrawn"]
    expected = {
        "consent_id": str(granted.id),
        "user_id": str(user),
        "consent_type": "analytics",
        "consent_version": "2.1",
    }
    assert all(e.payload == expected for e in events)
    assert "Ada" not in str([e.payload for e in events])  # the free-text reason stays out


def test_a_consent_change_that_rolls_back_emits_nothing(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("UndecidedCo", users=1, consents=())

    with pytest.raises(RuntimeError), transaction(engine) as session:
        records.grant(session, tenant.id, tenant.users[0], "analytics")
        raise RuntimeError("the request fails after the grant")

    assert _events(engine, tenant.id, "accute.consent.") == []


def test_filing_and_completing_a_request_emit_filed_then_completed(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare
    tenant = make_tenant("RequestingCo", users=2, consents=())
    first, second = tenant.users

    # Execute: an access request completed, a restriction request rejected.
    with transaction(engine) as session:
        access = dsr.file_request(session, tenant.id, first, "access", {"message": "send me everything"})
    with transaction(engine) as session:
        dsr.process_request(session, access.id)
    with transaction(engine) as session:
        restriction = dsr.file_request(session, tenant.id, second, "restriction")
    with transaction(engine) as session:
        dsr.process_request(session, restriction.id, reject_reason="not applicable to Bob")

    # Assert
    events = _events(engine, tenant.id, "accute.dsr.")
    assert [(e.event_type, e.payload["request_id"]) for e in events] == [
        ("accute.dsr.filed", str(access.id)),
        ("accute.dsr.completed", str(access.id)),
        ("accute.dsr.filed", str(restriction.id)),
        ("accute.dsr.completed", str(restriction.id)),
    ]
    assert events[0].payload["user_id"] == str(first) and events[0].payload["request_type"] == "access"
    assert events[0].payload["deadline"] is not None
    assert [e.payload["status"] for e in events if e.event_type == "accute.dsr.completed"] == [
        "completed",
        "rejected",
    ]
    text = str([e.payload for e in events])
    assert "everything" not in text and "Bob" not in text and "example.com" not in text


def test_a_request_processing_that_rolls_back_emits_no_completion(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    tenant = make_tenant("RollbackCo", users=1, consents=())
    with transaction(engine) as session:
        request = dsr.file_request(session, tenant.id, tenant.users[0], "erasure")

    with pytest.raises(RuntimeError), transaction(engine) as session:
        dsr.process_request(session, request.id)
        raise RuntimeError("the erasure fails before it commits")

    assert [e.event_type for e in _events(engine, tenant.id, "accute.dsr.")] == ["accute.dsr.filed"]
