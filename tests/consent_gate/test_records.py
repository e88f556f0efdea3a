"""Consent records: grant, withdraw, history, audit, and refusals that write nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from consent_gate import records
from orchestrator.keys import LocalFileKek
from schema import audit
from schema.db import transaction
from schema.errors import InvalidInputError, NotFoundError
from schema.models import ConsentEvent, ImmutableAuditLog, UserConsent
from schema.personal_data import PersonalDataVault
from tests.consent_gate.conftest import TenantFactory


def count(engine: Engine, model: type[object]) -> int:
    with transaction(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_withdrawal_keeps_the_earlier_grant_in_history(engine: Engine, make_tenant: TenantFactory) -> None:
    # Prepare
    tenant = make_tenant("History", users=1, consents=())
    user = tenant.users[0]
    with transaction(engine) as session:
        granted = records.grant(
            session, tenant.id, user, "analytics", "2.1", ip_address="203.0.113.9", user_agent="Firefox/130"
        )
        assert granted.changed is True

    # Execute
    with transaction(engine) as session:
        withdrawn = records.withdraw(session, tenant.id, user, "analytics")

    # Assert: current state says withdrawn; history still shows the grant with where it came from.
    assert withdrawn.changed is True
    with transaction(engine) as session:
        (current,) = records.current_consents(session, tenant.id, user)
        events = [records.event_as_dict(e) for e in records.history(session, tenant.id, user)]
    assert current.consent_given is False
    assert current.withdrawn_at is not None and current.given_at is not None
    assert [(e["action"], e["consent_version"]) for e in events] == [("granted", "2.1"), ("withdrawn", "2.1")]
    assert events[0]["ip_address"] == "203.0.113.9"
    assert events[0]["user_agent"] == "Firefox/130"


def test_every_change_is_audited_without_ip_or_user_agent(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Audited", users=1, consents=())
    with transaction(engine) as session:
        records.grant(session, tenant.id, tenant.users[0], "marketing", ip_address="::1", user_agent="UA")
        records.withdraw(session, tenant.id, tenant.users[0], "marketing")
    with transaction(engine) as session:
        rows = session.scalars(
            select(ImmutableAuditLog)
            .where(ImmutableAuditLog.action.like("consent.%"))
            .order_by(ImmutableAuditLog.id)
        ).all()
        assert all(r.ok for r in audit.verify(session, tenant.id))
    assert [r.action for r in rows] == ["consent.granted", "consent.withdrawn"]
    assert all(r.user_id == tenant.users[0] and r.ip_address is None for r in rows)
    assert rows[0].action_data == {"consent_type": "marketing", "consent_version": "1.0"}


def test_repeating_a_grant_or_withdrawal_changes_nothing(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Idempotent", users=1, consents=("ai_training",))
    events_before = count(engine, ConsentEvent)
    with transaction(engine) as session:
        assert records.grant(session, tenant.id, tenant.users[0], "ai_training").changed is False
        assert records.withdraw(session, tenant.id, tenant.users[0], "ai_training").changed is True
        assert records.withdraw(session, tenant.id, tenant.users[0], "ai_training").changed is False
    assert count(engine, ConsentEvent) == events_before + 1


def test_show_lists_only_the_organizations_consents(engine: Engine, make_tenant: TenantFactory) -> None:
    a, b = make_tenant("ShowA", users=2), make_tenant("ShowB", users=1)
    with transaction(engine) as session:
        listed = records.current_consents(session, a.id)
        assert {c.user_id for c in listed} == set(a.users)
        assert len(listed) == 6
        assert len(records.current_consents(session, b.id, b.users[0])) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"consent_type": "newsletter"}, InvalidInputError, "use one of: data_processing"),
        ({"version": "   "}, InvalidInputError, "consent version is empty"),
        ({"ip_address": "300.1.1.1"}, InvalidInputError, "not an IPv4 or IPv6"),
        ({"user_agent": "bad\x00agent"}, InvalidInputError, "control characters"),
        ({"user_id": "not-a-uuid"}, InvalidInputError, "not a UUID"),
        ({"user_id": str(uuid.UUID(int=5))}, NotFoundError, "does not exist in organization"),
        ({"org": str(uuid.UUID(int=5))}, NotFoundError, "organization"),
        ({"other_tenant_user": True}, NotFoundError, "does not exist in organization"),
    ],
)
def test_bad_grant_is_refused_and_writes_nothing(
    engine: Engine,
    make_tenant: TenantFactory,
    kwargs: dict[str, object],
    error: type[Exception],
    fragment: str,
) -> None:
    # Prepare (the parameters are shared between backends: copy before popping)
    kwargs = dict(kwargs)
    mine, other = make_tenant("Mine", users=1, consents=()), make_tenant("Other", users=1, consents=())
    user: object = other.users[0] if kwargs.pop("other_tenant_user", False) else mine.users[0]
    args = {"org": mine.id, "user_id": user, "consent_type": "ai_training", **kwargs}
    before = (count(engine, UserConsent), count(engine, ConsentEvent), count(engine, ImmutableAuditLog))

    # Execute / Assert
    with pytest.raises(error) as caught, transaction(engine) as session:
        records.grant(
            session,
            args.pop("org"),  # type: ignore[arg-type]
            args.pop("user_id"),  # type: ignore[arg-type]
            **args,  # type: ignore[arg-type]
        )
    assert fragment in str(caught.value)
    assert (
        count(engine, UserConsent),
        count(engine, ConsentEvent),
        count(engine, ImmutableAuditLog),
    ) == before


def test_withdrawing_a_consent_never_given_is_not_found(engine: Engine, make_tenant: TenantFactory) -> None:
    tenant = make_tenant("Never", users=1, consents=())
    with pytest.raises(NotFoundError, match="never gave consent marketing"), transaction(engine) as session:
        records.withdraw(session, tenant.id, tenant.users[0], "marketing")
    assert count(engine, UserConsent) == 0


def test_free_text_reason_enters_the_audit_log_only_sealed(
    engine: Engine, make_tenant: TenantFactory, tmp_path: Path
) -> None:
    # Prepare
    tenant = make_tenant("Reasons", users=1, consents=())
    user = tenant.users[0]
    vault = PersonalDataVault(LocalFileKek(tmp_path / "kek.json"))
    system = f"dsr:erasure:{uuid.uuid4()}"

    # Execute: a typed reason with a vault, one without, and a reason the product writes.
    with transaction(engine) as session:
        records.grant(session, tenant.id, user, "analytics", reason="my accountant said so", vault=vault)
        records.withdraw(session, tenant.id, user, "analytics", reason="changed my mind")
        records.grant(session, tenant.id, user, "marketing", reason=system)

    # Assert
    with transaction(engine) as session:
        data = [
            r.action_data
            for r in session.scalars(
                select(ImmutableAuditLog)
                .where(ImmutableAuditLog.action.like("consent.%"))
                .order_by(ImmutableAuditLog.id)
            )
        ]
        opened = vault.open_data(session, user, data[0])
    assert "my accountant" not in str(data) and "changed my mind" not in str(data)
    assert opened["reason"] == "my accountant said so"
    assert "reason" not in data[1] and "reason_sealed" not in data[1]
    assert data[2]["reason"] == system
