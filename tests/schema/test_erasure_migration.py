"""Migration 0007 on a database created at 0005 with users: emails leave the audit log, re-anchored."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import Engine, select

from schema import audit, audit_guard, directory, migrate
from schema.db import transaction
from schema.models import ImmutableAuditLog, User, UserConsent
from schema.timeutil import utcnow

EMAILS = ("ada.ledger@old-rule.example.com", "bob.journal@old-rule.example.com")


def _old_rule_users(engine: Engine) -> tuple[uuid.UUID, uuid.UUID, dict[uuid.UUID, str]]:
    """What revision 0005's code wrote: ``user.created`` with the email, then more records after it."""
    with transaction(engine) as session:
        org = directory.create_organization(session, "Old Rule")
        quiet = directory.create_organization(session, "No Users")
        for address in EMAILS:
            user = User(organization_id=org.id, email=address)
            session.add(user)
            session.flush()
            audit.append(
                session,
                organization_id=org.id,
                action="user.created",
                resource_type="user",
                resource_id=user.id,
                data={"email": address},
            )
            # A consent granted then, as 0005's ``records.grant`` wrote it (today's also appends a
            # hub event, to a table that revision has not created yet).
            consent = UserConsent(
                organization_id=org.id,
                user_id=user.id,
                consent_type="federated_learning",
                consent_given=True,
                consent_version="1.0",
                given_at=utcnow(),
            )
            session.add(consent)
            session.flush()
            audit.append(
                session,
                organization_id=org.id,
                action="consent.granted",
                resource_type="user_consent",
                resource_id=consent.id,
                user_id=user.id,
                data={"consent_type": "federated_learning", "consent_version": "1.0"},
            )
    with transaction(engine) as session:
        heads = {
            o: session.scalars(
                select(ImmutableAuditLog.record_hash)
                .where(ImmutableAuditLog.organization_id == o)
                .order_by(ImmutableAuditLog.id.desc())
            ).first()
            or ""
            for o in (org.id, quiet.id)
        }
    return org.id, quiet.id, heads


def _audit_text(engine: Engine) -> str:
    with transaction(engine) as session:
        return json.dumps([r.action_data for r in session.scalars(select(ImmutableAuditLog))])


def test_upgrade_removes_emails_and_reanchors_a_chain_that_verifies(empty_engine: Engine) -> None:
    # Prepare
    engine = empty_engine
    migrate.upgrade(engine, "0005")
    org, quiet, old_heads = _old_rule_users(engine)
    assert all(address in _audit_text(engine) for address in EMAILS)

    # Execute
    migrate.upgrade(engine)

    # Assert: no email in the log, the chains verify, one re-anchor names the old head.
    assert not any(address in _audit_text(engine) for address in EMAILS)
    with transaction(engine) as session:
        reports = {r.organization_id: r for r in audit.verify(session)}
        assert all(r.ok for r in reports.values()), reports
        assert reports[str(org)].reanchors == 1 and reports[str(quiet)].reanchors == 0
        chain = session.scalars(
            select(ImmutableAuditLog)
            .where(ImmutableAuditLog.organization_id == org)
            .order_by(ImmutableAuditLog.id)
        ).all()
        anchor = chain[-1]
        created = [r for r in chain if r.action == "user.created"]
        untouched = session.scalars(
            select(ImmutableAuditLog.record_hash).where(ImmutableAuditLog.organization_id == quiet)
        ).all()
        assert {u.email for u in session.scalars(select(User))} == set(EMAILS)  # the live rows keep them
    assert anchor.action == audit.REANCHOR_ACTION
    assert anchor.action_data["old_head"] == old_heads[org]
    assert anchor.action_data["new_head"] == chain[-2].record_hash != old_heads[org]
    assert anchor.action_data["rewritten"] == [r.id for r in created]
    assert all(r.action_data == {"email_removed_by_migration": "0007"} for r in created)
    assert untouched == [old_heads[quiet]]


def test_a_forged_reanchor_fails_verification(empty_engine: Engine) -> None:
    # Prepare: a migrated chain whose re-anchor claims another old head (record hash kept consistent).
    engine = empty_engine
    migrate.upgrade(engine, "0005")
    org, _, _ = _old_rule_users(engine)
    migrate.upgrade(engine)
    with transaction(engine) as session:
        audit_guard.maintenance(session)  # the owner, past PostgreSQL's append-only trigger
        anchor = session.scalars(
            select(ImmutableAuditLog).where(ImmutableAuditLog.action == audit.REANCHOR_ACTION)
        ).one()
        anchor.action_data = {**anchor.action_data, "old_head": "f" * 64}
        anchor.record_hash = audit.compute_hash(anchor)

    # Execute
    with transaction(engine) as session:
        (report,) = audit.verify(session, org)

    # Assert
    assert not report.ok and report.first_bad_id == anchor.id
    assert report.reason == "re-anchor's binding of old and new head does not verify"


def test_downgrade_and_upgrade_again_adds_no_second_anchor(empty_engine: Engine) -> None:
    engine = empty_engine
    migrate.upgrade(engine, "0005")
    org, _, _ = _old_rule_users(engine)
    migrate.upgrade(engine)

    migrate.downgrade(engine, "0005")
    migrate.upgrade(engine)

    with transaction(engine) as session:
        (report,) = audit.verify(session, org)
    assert report.ok and report.reanchors == 1
    assert not any(address in _audit_text(engine) for address in EMAILS)
