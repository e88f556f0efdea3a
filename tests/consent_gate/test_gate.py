"""The gate's named scenarios (issue 4), each on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, func, select

from consent_gate import (
    REJECTED_CONSENT_CHANGED,
    ConsentPolicy,
    compute_snapshot,
    dsr,
    eligibility,
    recheck,
    records,
    require_current,
    take_snapshot,
)
from schema import audit, directory
from schema.config import Settings
from schema.db import transaction
from schema.errors import ConsentChangedError, InvalidInputError
from schema.models import ConsentSnapshot, ConsentSnapshotMember, ImmutableAuditLog
from tests.consent_gate.conftest import TenantFactory

SETTINGS = Settings(database_url="sqlite://")


def snapshot_of(engine: Engine, org: object, model_type: str = "digits"):  # type: ignore[no-untyped-def]
    with transaction(engine) as session:
        return take_snapshot(session, org, model_type)  # type: ignore[arg-type]


def test_withdrawal_between_rounds_drops_user_from_next_snapshot_and_changes_digest(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare: round 1 trains on everyone.
    tenant = make_tenant("Between")
    round1 = snapshot_of(engine, tenant.id)
    assert set(round1.user_ids) == set(tenant.users)

    # Execute: one user withdraws ai_training before round 2.
    with transaction(engine) as session:
        records.withdraw(session, tenant.id, tenant.users[0], "ai_training")
    round2 = snapshot_of(engine, tenant.id)

    # Assert
    assert tenant.users[0] not in round2.user_ids
    assert set(round2.user_ids) == set(tenant.users[1:])
    assert round2.digest != round1.digest
    assert round2.id != round1.id
    with transaction(engine) as session:  # round 1's snapshot (and its members) is kept for lineage
        assert session.get(ConsentSnapshot, round1.id) is not None
        members = select(func.count()).where(ConsentSnapshotMember.snapshot_id == round1.id)
        assert session.scalar(members) == 3


def test_withdrawal_during_round_rejects_that_rounds_contribution(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare: the node received the snapshot and is training.
    tenant = make_tenant("During")
    sent = snapshot_of(engine, tenant.id)
    with transaction(engine) as session:
        assert recheck(session, tenant.id, "digits", sent.digest) is True
        require_current(session, tenant.id, "digits", sent.digest)

    # Execute: a user withdraws vamn_contribution before the update arrives.
    with transaction(engine) as session:
        records.withdraw(session, tenant.id, tenant.users[1], "vamn_contribution")

    # Assert: the re-check on arrival refuses the contribution.
    with transaction(engine) as session:
        assert recheck(session, tenant.id, "digits", sent.digest) is False
        with pytest.raises(ConsentChangedError) as caught:
            require_current(session, tenant.id, "digits", sent.digest)
    assert caught.value.code == REJECTED_CONSENT_CHANGED == "rejected_consent_changed"


def test_withdraw_then_regrant_during_round_still_rejects(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Regrant")
    sent = snapshot_of(engine, tenant.id)
    with transaction(engine) as session:
        records.withdraw(session, tenant.id, tenant.users[0], "federated_learning")
    with transaction(engine) as session:
        records.grant(session, tenant.id, tenant.users[0], "federated_learning")
        now = compute_snapshot(session, tenant.id, "digits")
        assert set(now.user_ids) == set(sent.user_ids)
        assert recheck(session, tenant.id, "digits", sent.digest) is False


def test_new_consent_version_changes_digest(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Version")
    before = snapshot_of(engine, tenant.id)
    with transaction(engine) as session:
        records.grant(session, tenant.id, tenant.users[2], "ai_training", "2.0")
    after = snapshot_of(engine, tenant.id)
    assert after.user_ids == before.user_ids
    assert after.digest != before.digest


def test_erasure_request_filed_mid_run_excludes_user_at_once(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare
    tenant = make_tenant("Erasure")
    sent = snapshot_of(engine, tenant.id)

    # Execute: filed, not processed.
    with transaction(engine) as session:
        request = dsr.file_request(session, tenant.id, tenant.users[0], "erasure")
        assert request.status == "pending"

    # Assert: out of the next snapshot, and the running round's contribution is rejected.
    with transaction(engine) as session:
        now = compute_snapshot(session, tenant.id, "digits")
        assert tenant.users[0] not in now.user_ids
        assert len(now.user_ids) == 2
        assert recheck(session, tenant.id, "digits", sent.digest) is False
        assert eligibility(session, tenant.id, "digits", SETTINGS).consenting_users == 2


@pytest.mark.parametrize("request_type", ["restriction", "objection"])
def test_restriction_and_objection_exclude_while_open_and_not_after_rejection(
    engine: Engine, make_tenant: TenantFactory, request_type: str
) -> None:
    tenant = make_tenant(f"Open-{request_type}")
    before = snapshot_of(engine, tenant.id)
    with transaction(engine) as session:
        request = dsr.file_request(session, tenant.id, tenant.users[1], request_type)
    during = snapshot_of(engine, tenant.id)
    assert tenant.users[1] not in during.user_ids

    with transaction(engine) as session:
        dsr.process_request(session, request.id, reject_reason="not applicable")
    after = snapshot_of(engine, tenant.id)

    assert set(after.user_ids) == set(tenant.users)
    assert after.digest == before.digest
    assert after.id == before.id  # content-addressed: the same population is the same snapshot


def test_completed_erasure_excludes_for_good(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Forever")
    with transaction(engine) as session:
        request = dsr.file_request(session, tenant.id, tenant.users[0], "erasure")
    with transaction(engine) as session:
        dsr.process_request(session, request.id)
    with transaction(engine) as session:  # even a later grant does not bring the user back
        for consent_type in ("ai_training", "federated_learning", "vamn_contribution"):
            records.grant(session, tenant.id, tenant.users[0], consent_type, "9.0")
    assert tenant.users[0] not in snapshot_of(engine, tenant.id).user_ids


def test_organization_without_consenting_users_is_never_eligible(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare: no users; users without consents; users with some but not all required consents.
    empty = make_tenant("Empty", users=0)
    silent = make_tenant("Silent", consents=())
    partial = make_tenant("Partial", consents=("federated_learning", "ai_training"))

    with transaction(engine) as session:
        for tenant in (empty, silent, partial):
            # Execute
            result = eligibility(session, tenant.id, "digits", SETTINGS)
            # Assert
            assert result.eligible is False
            assert result.code == "too_few_consenting_users"
            assert result.consenting_users == 0
            assert "at least 1" in (result.reason or "")
            assert compute_snapshot(session, tenant.id, "digits").user_ids == ()
        missing = eligibility(session, "00000000-0000-0000-0000-00000000000f", "digits", SETTINGS)
    assert (missing.eligible, missing.code) == (False, "organization_not_found")


def test_eligibility_needs_k_consenting_users(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Kay", users=2)
    strict = Settings(database_url="sqlite://", min_consenting_users=3)
    with transaction(engine) as session:
        assert eligibility(session, tenant.id, "digits", SETTINGS).eligible is True
        refused = eligibility(session, tenant.id, "digits", strict)
    assert (refused.eligible, refused.consenting_users) == (False, 2)
    assert refused.reason is not None and "at least 3" in refused.reason


def test_org_a_consents_and_requests_never_change_org_b_snapshot(
    engine: Engine, make_tenant: TenantFactory
) -> None:
    # Prepare
    a, b = make_tenant("Alpha"), make_tenant("Beta")
    b_before = snapshot_of(engine, b.id)

    # Execute: everything org A can do to its own users.
    with transaction(engine) as session:
        records.withdraw(session, a.id, a.users[0], "ai_training")
        records.grant(session, a.id, a.users[1], "ai_training", "2.0")
        dsr.file_request(session, a.id, a.users[2], "objection")
        erasure = dsr.file_request(session, a.id, a.users[1], "erasure")
    with transaction(engine) as session:
        dsr.process_request(session, erasure.id)

    # Assert
    with transaction(engine) as session:
        b_after = compute_snapshot(session, b.id, "digits")
        assert recheck(session, b.id, "digits", b_before.digest) is True
        assert compute_snapshot(session, a.id, "digits").user_ids == ()
    assert b_after.user_ids == b_before.user_ids
    assert b_after.digest == b_before.digest


def test_snapshot_is_sorted_stored_once_and_audited(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Stored", users=5)
    first = snapshot_of(engine, tenant.id)
    second = snapshot_of(engine, tenant.id)
    assert list(first.user_ids) == sorted(first.user_ids, key=str)
    assert (second.id, second.digest) == (first.id, first.digest)
    assert first.as_dict()["user_count"] == 5
    with transaction(engine) as session:
        taken = select(func.count()).where(
            ImmutableAuditLog.organization_id == tenant.id,
            ImmutableAuditLog.action == "consent.snapshot_taken",
        )
        assert session.scalar(taken) == 1
        assert all(report.ok for report in audit.verify(session, tenant.id))


def test_policy_decides_which_consents_count(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Policy", consents=("federated_learning", "ai_training"))
    local_only = ConsentPolicy.from_dict({"model_types": {"local_forecast": {"feeds_vamn": False}}})
    with transaction(engine) as session:
        assert compute_snapshot(session, tenant.id, "digits").user_ids == ()
        snap = compute_snapshot(session, tenant.id, "local_forecast", local_only)
        assert set(snap.user_ids) == set(tenant.users)
        assert snap.required_consents == ("ai_training", "federated_learning")
        with pytest.raises(InvalidInputError, match="not known"):
            compute_snapshot(session, tenant.id, "local_forecast")


def test_users_of_other_tenants_never_enter_a_snapshot(engine: Engine, make_tenant: TenantFactory) -> None:
    a = make_tenant("Left")
    with transaction(engine) as session:
        b = directory.create_organization(session, "Right")
    with transaction(engine) as session:
        assert compute_snapshot(session, b.id, "digits").user_ids == ()
        assert eligibility(session, b.id, "digits", SETTINGS).eligible is False
    assert len(snapshot_of(engine, a.id).user_ids) == 3


def test_single_consent_policy_still_detects_a_regrant(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Single", users=2, consents=("federated_learning",))
    one = ConsentPolicy.from_dict({"base": ["federated_learning"], "vamn": []})
    with transaction(engine) as session:
        before = compute_snapshot(session, tenant.id, "digits", one)
    with transaction(engine) as session:
        records.withdraw(session, tenant.id, tenant.users[0], "federated_learning")
        records.grant(session, tenant.id, tenant.users[0], "federated_learning")
    with transaction(engine) as session:
        after = compute_snapshot(session, tenant.id, "digits", one)
    assert before.required_consents == ("federated_learning",)
    assert after.user_ids == before.user_ids and len(after.user_ids) == 2
    assert after.digest != before.digest


@pytest.mark.parametrize("in_limit", [500, 1])  # a filtered IN list, and the grouped scan of everyone
def test_batch_eligibility_answers_as_eligibility_does_for_every_tenant(
    engine: Engine, make_tenant: TenantFactory, monkeypatch: pytest.MonkeyPatch, in_limit: int
) -> None:
    # Prepare: full, partial, none, restricted by a request, a withdrawal, and a missing organization.
    from consent_gate import batch_eligibility, gate

    monkeypatch.setattr(gate, "BATCH_IN_LIMIT", in_limit)
    full = make_tenant("Full", users=3)
    partial = make_tenant("Partial", consents=("federated_learning", "ai_training"))
    empty = make_tenant("Empty", users=0)
    restricted = make_tenant("Restricted", users=2)
    withdrawn = make_tenant("Withdrawn", users=2)
    make_tenant("NotAsked", users=4)  # eligible, but not in the batch: not in the answer
    with transaction(engine) as session:
        dsr.file_request(session, restricted.id, restricted.users[0], "restriction")
        records.withdraw(session, withdrawn.id, withdrawn.users[1], "vamn_contribution")
    missing = uuid.UUID("00000000-0000-0000-0000-00000000000f")
    asked = [full.id, partial.id, empty.id, restricted.id, withdrawn.id, missing]
    strict = Settings(database_url="sqlite://", min_consenting_users=2)

    for settings in (SETTINGS, strict):
        with transaction(engine) as session:
            # Execute
            batch = batch_eligibility(session, asked, "digits", settings)
            # Assert: the same verdict, count, code and reason as one call per tenant.
            one_by_one = {org: eligibility(session, org, "digits", settings) for org in asked}
        assert batch == one_by_one
    assert [batch[t.id].consenting_users for t in (full, partial, empty, restricted, withdrawn)] == [
        3,
        0,
        0,
        1,
        1,
    ]
    assert batch[missing].code == "organization_not_found"
