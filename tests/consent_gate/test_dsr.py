"""Data subject requests: deadlines, listing, access export, erasure with lineage kept, refusals."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from consent_gate import dsr, lineage, records, take_snapshot
from schema import audit
from schema.db import transaction
from schema.errors import ConflictError, InvalidInputError, NotFoundError
from schema.models import ConsentSnapshotMember, DataSubjectRequest, ImmutableAuditLog, User
from schema.timeutil import as_utc, utcnow
from tests.consent_gate.conftest import Tenant, TenantFactory


def trained_on(engine: Engine, tenant: Tenant, run_id: str = "run-1", version: str = "1.0.0") -> None:
    """A round of `run_id` trained on the tenant's current snapshot and published `version`."""
    with transaction(engine) as session:
        snapshot = take_snapshot(session, tenant.id, "digits")
        lineage.record_snapshot_use(session, snapshot.digest, 1, run_id=run_id)
    with transaction(engine) as session:
        assert lineage.link_model_version(session, run_id, "vamn-quantitative", version) == 1


def test_filing_sets_a_thirty_day_deadline_and_is_audited(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Deadline", users=1)
    before = utcnow()
    with transaction(engine) as session:
        request = dsr.file_request(session, tenant.id, tenant.users[0], "access", {"note": "by email"})
    with transaction(engine) as session:
        stored = session.get(DataSubjectRequest, request.id)
        assert stored is not None
        assert stored.status == "pending"
        assert stored.request_details == {"note": "by email"}
        assert as_utc(stored.deadline) - as_utc(stored.created_at or before) == timedelta(days=30)
        assert before + timedelta(days=30) <= as_utc(stored.deadline) <= utcnow() + timedelta(days=30)
        filed = session.scalars(
            select(ImmutableAuditLog).where(ImmutableAuditLog.action == "dsr.filed")
        ).one()
    assert filed.resource_id == request.id and filed.action_data["request_type"] == "access"


def test_second_open_request_of_the_same_type_is_a_conflict(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    tenant = make_tenant("Twice", users=1)
    with transaction(engine) as session:
        dsr.file_request(session, tenant.id, tenant.users[0], "objection")
    with pytest.raises(ConflictError, match="already has an open objection"), transaction(engine) as session:
        dsr.file_request(session, tenant.id, tenant.users[0], "objection")
    with transaction(engine) as session:
        dsr.file_request(session, tenant.id, tenant.users[0], "access")
        assert len(dsr.list_requests(session, tenant.id)) == 2


def test_list_by_status_and_deadline_scoped_to_the_organization(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    a, b = make_tenant("ListA", users=2), make_tenant("ListB", users=1)
    with transaction(engine) as session:
        late = dsr.file_request(session, a.id, a.users[0], "access")
        early = dsr.file_request(session, a.id, a.users[1], "erasure")
        early.deadline = utcnow() - timedelta(days=1)  # overdue
        dsr.file_request(session, b.id, b.users[0], "access")
    with transaction(engine) as session:
        dsr.process_request(session, late.id)
    with transaction(engine) as session:
        listed = [dsr.request_as_dict(r) for r in dsr.list_requests(session, a.id)]
        pending = dsr.list_requests(session, a.id, "pending")
        everyone = dsr.list_requests(session)
        with pytest.raises(InvalidInputError, match="use one of: pending"):
            dsr.list_requests(session, a.id, "done")
    assert [r["id"] for r in listed] == [str(early.id), str(late.id)]
    assert [r["overdue"] for r in listed] == [True, False]
    assert [r.id for r in pending] == [early.id]
    assert len(everyone) == 3


def test_access_export_holds_consents_history_requests_and_lineage(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare: the user's consents trained a published model version.
    tenant = make_tenant("Access", users=2)
    user = tenant.users[0]
    trained_on(engine, tenant)
    with transaction(engine) as session:
        records.withdraw(session, tenant.id, user, "ai_training")
        request = dsr.file_request(session, tenant.id, user, "access")

    # Execute
    with transaction(engine) as session:
        processed = dsr.process_request(session, request.id, processed_by=tenant.users[1])

    # Assert
    assert processed.status == "completed" and processed.completed_at is not None
    assert processed.processed_by == tenant.users[1]
    export = (processed.response_details or {})["export"]
    json.dumps(export)  # JSON as it is
    assert export["user"]["id"] == str(user)
    assert export["user"]["email"] == "user0@access.example.com"
    assert {c["consent_type"] for c in export["consents"]} == {
        "ai_training",
        "federated_learning",
        "vamn_contribution",
    }
    assert [e["action"] for e in export["consent_history"]].count("granted") == 3
    assert ("withdrawn", "ai_training") in {
        (e["action"], e["consent_type"]) for e in export["consent_history"]
    }
    assert [r["id"] for r in export["data_subject_requests"]] == [str(request.id)]
    (entry,) = export["training_lineage"]
    assert entry["model_type"] == "digits"
    assert entry["uses"][0]["aggregation_round"] == 1
    assert (entry["uses"][0]["model_name"], entry["uses"][0]["model_version"]) == (
        "vamn-quantitative",
        "1.0.0",
    )


def test_completed_erasure_anonymizes_and_keeps_model_lineage(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare: consents with IP and user agent, an earlier access request, a trained model version.
    tenant = make_tenant("Erase", users=2, consents=())
    user, other = tenant.users
    with transaction(engine) as session:
        for consent_type in ("ai_training", "federated_learning", "vamn_contribution", "marketing"):
            for who in (user, other):
                records.grant(
                    session, tenant.id, who, consent_type, ip_address="198.51.100.7", user_agent="UA/1"
                )
        access = dsr.file_request(session, tenant.id, user, "access")
    with transaction(engine) as session:
        dsr.process_request(session, access.id)
    trained_on(engine, tenant)
    with transaction(engine) as session:
        erasure = dsr.file_request(session, tenant.id, user, "erasure", {"reason": "left the firm"})

    # Execute
    with transaction(engine) as session:
        done = dsr.process_request(session, erasure.id)

    # Assert: the user's personal data is gone ...
    with transaction(engine) as session:
        person = session.get(User, user)
        assert person is not None and person.email == f"erased-{user.hex}@erased.invalid"
        consents = records.current_consents(session, tenant.id, user)
        assert not any(c.consent_given or c.ip_address or c.user_agent for c in consents)
        history = records.history(session, tenant.id, user)
        assert history and not any(e.ip_address or e.user_agent for e in history)
        assert {e.consent_type for e in history if e.action == "withdrawn"} == {
            "ai_training",
            "federated_learning",
            "vamn_contribution",
            "marketing",
        }
        earlier = session.get(DataSubjectRequest, access.id)
        assert earlier is not None and earlier.response_details == {"redacted_by_erasure": str(erasure.id)}
        assert session.get(DataSubjectRequest, erasure.id).request_details == {}  # type: ignore[union-attr]
        # ... the other user is untouched ...
        assert all(
            str(c.ip_address) == "198.51.100.7" for c in records.current_consents(session, tenant.id, other)
        )
        # ... and the admin still sees which model versions were trained with the user.
        members = select(ConsentSnapshotMember.user_id).where(ConsentSnapshotMember.user_id == user)
        assert session.scalars(members).all() == [user]
        kept = lineage.user_lineage(session, tenant.id, user)
        assert kept[0]["uses"][0]["model_version"] == "1.0.0"
        assert all(r.ok for r in audit.verify(session, tenant.id))
        audit_text = json.dumps([r.action_data for r in session.scalars(select(ImmutableAuditLog))])
    assert done.status == "completed"
    response = done.response_details or {}
    assert response["lineage_kept"]["model_versions_trained_with_user"] == [
        {"model_name": "vamn-quantitative", "model_version": "1.0.0"}
    ]
    assert response["erased"]["email"] == "anonymized"
    assert "198.51.100.7" not in audit_text


def test_upheld_objection_withdraws_training_consents_only(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    tenant = make_tenant(
        "Object", users=1, consents=("ai_training", "federated_learning", "vamn_contribution", "analytics")
    )
    with transaction(engine) as session:
        request = dsr.file_request(session, tenant.id, tenant.users[0], "objection")
    with transaction(engine) as session:
        done = dsr.process_request(session, request.id)
        state = {
            c.consent_type: c.consent_given
            for c in records.current_consents(session, tenant.id, tenant.users[0])
        }
    assert (done.response_details or {})["withdrawn_consents"] == [
        "ai_training",
        "federated_learning",
        "vamn_contribution",
    ]
    assert state == {
        "ai_training": False,
        "federated_learning": False,
        "vamn_contribution": False,
        "analytics": True,
    }


def test_rectification_needs_and_applies_the_corrected_email(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    tenant = make_tenant("Rectify", users=2)
    with transaction(engine) as session:
        request = dsr.file_request(session, tenant.id, tenant.users[0], "rectification")
    with pytest.raises(InvalidInputError, match="needs the corrected email"), transaction(engine) as session:
        dsr.process_request(session, request.id)
    with pytest.raises(ConflictError, match="already has that email"), transaction(engine) as session:
        dsr.process_request(session, request.id, rectified_email="user1@rectify.example.com")
    with transaction(engine) as session:
        dsr.process_request(session, request.id, rectified_email="Ann.New@Example.com")
    with transaction(engine) as session:
        assert session.get(User, tenant.users[0]).email == "ann.new@example.com"  # type: ignore[union-attr]
        assert session.get(DataSubjectRequest, request.id).status == "completed"  # type: ignore[union-attr]


def test_refused_processing_changes_nothing(engine: Engine, make_tenant: TenantFactory) -> None:
    a, b = make_tenant("ProcA", users=1), make_tenant("ProcB", users=1)
    with transaction(engine) as session:
        request = dsr.file_request(session, a.id, a.users[0], "erasure")

    with pytest.raises(NotFoundError), transaction(engine) as session:
        dsr.process_request(session, request.id, organization_id=b.id)
    with pytest.raises(NotFoundError, match="does not exist in organization"), transaction(engine) as session:
        dsr.process_request(session, request.id, processed_by=b.users[0])
    with pytest.raises(NotFoundError), transaction(engine) as session:
        dsr.process_request(session, "00000000-0000-0000-0000-000000000001")

    with transaction(engine) as session:
        stored = session.get(DataSubjectRequest, request.id)
        person = session.get(User, a.users[0])
        assert stored is not None and stored.status == "pending"
        assert person is not None and person.email == "user0@proca.example.com"
    with transaction(engine) as session:
        dsr.process_request(session, request.id, organization_id=a.id, reject_reason="identity not verified")
    with pytest.raises(ConflictError, match="already rejected"), transaction(engine) as session:
        dsr.process_request(session, request.id)


def test_lineage_by_id_or_digest_and_refusals(engine: Engine, make_tenant: TenantFactory) -> None:
    a, b = make_tenant("LinA", users=1), make_tenant("LinB", users=1)
    with transaction(engine) as session:
        snap = take_snapshot(session, a.id, "digits")
        assert snap.id is not None
        lineage.record_snapshot_use(session, snap.id, 0, run_id="r", model_name="m", model_version="v1")
        lineage.record_snapshot_use(session, str(snap.id), 1, run_id="r")
        lineage.record_snapshot_use(session, snap.digest, 2, run_id="r")
        with pytest.raises(NotFoundError):
            lineage.record_snapshot_use(session, snap.digest, 3, organization_id=b.id)
        with pytest.raises(InvalidInputError, match="non-negative"):
            lineage.record_snapshot_use(session, snap.digest, -1)
        with pytest.raises(InvalidInputError, match="neither a snapshot id"):
            lineage.record_snapshot_use(session, "abc", 1)
        assert lineage.link_model_version(session, "r", "m", "v2") == 2
        uses = lineage.user_lineage(session, a.id, a.users[0])[0]["uses"]
        assert [(u["aggregation_round"], u["model_version"]) for u in uses] == [
            (0, "v1"),
            (1, "v2"),
            (2, "v2"),
        ]
        assert lineage.user_lineage(session, b.id, b.users[0]) == []
        with pytest.raises(NotFoundError):
            lineage.user_lineage(session, b.id, a.users[0])
