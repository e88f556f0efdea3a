"""The dead man's switch against the running service: configure and heartbeat over HTTP, a missed
heartbeat fires the actions (the watcher's clock injected), the cascade then refuses the
organization's providers and the fallback, and only a platform admin reverses it."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select

from orchestrator.security import dms_actions
from schema.db import transaction
from schema.models import DeadManSwitchFiring, HubOutbox, ImmutableAuditLog, OrganizationDataKey, User
from schema.timeutil import utcnow
from tests.orchestrator.conftest import Service
from tests.orchestrator.fakes import FakeProvider

PROVIDER_KEY = "tenant-key-0123456789"


def _users(service: Service, org: uuid.UUID, n: int) -> list[uuid.UUID]:
    with transaction(service.engine) as session:
        users = [
            User(organization_id=org, email=f"u{i}-{uuid.uuid4().hex[:6]}@firm.example") for i in range(n)
        ]
        session.add_all(users)
        session.flush()
        return [u.id for u in users]


def _configure(
    service: Service, org: uuid.UUID, admin: uuid.UUID, contacts: list[uuid.UUID], **fields: Any
) -> Any:
    body = {
        "admin_user_id": str(admin),
        "heartbeat_interval_hours": 24,
        "grace_period_hours": 48,
        "escalation_contacts": [str(c) for c in contacts],
        **fields,
    }
    return service.client.put(f"/v1/orgs/{org}/dead-man-switch", json=body, headers=service.headers(org))


def _audit(service: Service, org: uuid.UUID) -> list[ImmutableAuditLog]:
    with transaction(service.engine) as session:
        rows = list(
            session.scalars(
                select(ImmutableAuditLog)
                .where(ImmutableAuditLog.organization_id == org, ImmutableAuditLog.action.like("dms.%"))
                .order_by(ImmutableAuditLog.id)
            )
        )
        session.expunge_all()
    return rows


def test_a_missed_heartbeat_fires_every_action_and_a_platform_admin_reverses_them(
    service: Service, provider_factory: Any, fallback: FakeProvider
) -> None:
    # Prepare: an organization with its own provider (key encrypted under data key 1), a switch.
    provider = provider_factory(api_key=PROVIDER_KEY, reply="tenant answer")
    org = service.org()
    admin, contact_a, contact_b = _users(service, org, 3)
    service.add_config(org, api_endpoint=provider.url, api_key=PROVIDER_KEY)
    configured = _configure(service, org, admin, [contact_a, contact_b])
    before = service.chat(org)
    keyring = service.services.keyring

    # Execute: the watcher looks after the interval (doom), then after the grace period (fire),
    # then once more (nothing more).
    now = utcnow()
    doom = dms_actions.tick(service.engine, keyring, now + timedelta(hours=25))
    fired = dms_actions.tick(service.engine, keyring, now + timedelta(hours=25 + 48))
    again = dms_actions.tick(service.engine, keyring, now + timedelta(hours=25 + 49))
    service.services.cascade.invalidate(org)  # type: ignore[union-attr]  # what serve's watcher does
    calls_before = (len(provider.received), len(fallback.received))
    refused = service.chat(org)
    calls_after = (len(provider.received), len(fallback.received))
    shown = service.client.get(f"/v1/orgs/{org}/dead-man-switch", headers=service.headers(org)).json()

    # Assert: configured; answered by the tenant's provider before; doom then fired, once.
    assert configured.status_code == 200 and configured.json()["state"] == "armed"
    assert before.status_code == 200 and before.json()["content"] == "tenant answer"
    assert [d["state"] for d in doom] == ["doom"] and [f["state"] for f in fired] == ["fired"]
    assert again == []
    firing = fired[0]["firing"]
    assert firing["training_paused"] and firing["providers_disabled"] and firing["fallback_disabled"]
    assert firing["rotated_key_version"] == 2 and firing["notified_contacts"] == 2
    # Neither the tenant's provider nor the fallback is called any more.
    assert refused.status_code == 502 and calls_after == calls_before
    assert shown["state"] == "fired" and shown["firing"]["id"] == firing["id"]
    with transaction(service.engine) as session:
        versions = sorted(
            session.scalars(
                select(OrganizationDataKey.version).where(OrganizationDataKey.organization_id == org)
            )
        )
        firings = session.scalar(select(sa.func.count()).select_from(DeadManSwitchFiring))
    assert versions == [1, 2] and firings == 1
    actions = [r.action for r in _audit(service, org)]
    assert actions == [
        "dms.configured",
        "dms.doom_timer_started",
        "dms.training_paused",
        "dms.providers_disabled",
        "dms.fallback_disabled",
        "dms.data_key_rotated",
        "dms.triggered",
        "dms.fired",
    ]
    triggered = next(r for r in _audit(service, org) if r.action == "dms.triggered")
    assert triggered.action_data["contact_count"] == 2
    assert sorted(triggered.action_data["escalation_contacts"]) == sorted([str(contact_a), str(contact_b)])
    assert "@" not in json.dumps([r.action_data for r in _audit(service, org)])  # ids, never addresses
    with transaction(service.engine) as session:
        fired = session.scalars(
            select(HubOutbox).where(
                HubOutbox.organization_id == org,
                HubOutbox.event_type == "accute.security.dead_man_switch.fired",
            )
        ).all()
        payloads = [(r.payload, r.correlation_id) for r in fired]
    assert len(payloads) == 1  # the hub notifies the contacts, once
    assert sorted(payloads[0][0]["escalation_contacts"]) == sorted([str(contact_a), str(contact_b)])
    assert payloads[0][1] == payloads[0][0]["firing_id"] and "@" not in json.dumps(payloads[0][0])

    # Execute: the organization's admin may not reverse; a platform admin may, once.
    by_org_admin = service.client.post(
        f"/v1/orgs/{org}/dead-man-switch/reverse", headers=service.headers(org)
    )
    platform = service.headers(None, "platform_admin")
    reversed_ = service.client.post(f"/v1/orgs/{org}/dead-man-switch/reverse", headers=platform)
    twice = service.client.post(f"/v1/orgs/{org}/dead-man-switch/reverse", headers=platform)
    after = service.chat(org)
    state = service.client.get(f"/v1/orgs/{org}/dead-man-switch", headers=platform).json()

    # Assert: restrictions lifted (the tenant's provider answers with its re-encrypted key), the
    # rotated key kept, the switch re-armed; the second reversal changes nothing.
    assert by_org_admin.status_code == 403
    assert reversed_.status_code == 200 and reversed_.json()["reversed"] is True
    assert reversed_.json()["undone"] == ["pause_training", "disable_providers", "disable_fallback"]
    assert reversed_.json()["kept"] == ["rotate_data_key", "notify_contacts"]
    assert twice.json()["reversed"] is False
    assert after.status_code == 200 and after.json()["content"] == "tenant answer"
    assert state["state"] == "armed" and state["firing"] is None
    assert [r.action for r in _audit(service, org)][-1] == "dms.reversed"


def test_a_heartbeat_resets_the_timer_and_org_admins_heartbeat_only_their_own(service: Service) -> None:
    # Prepare: a switch, the doom timer started by a look after the interval.
    org, other = service.org(), service.org()
    (admin,) = _users(service, org, 1)
    assert (
        _configure(service, org, admin, [], heartbeat_interval_hours=1, grace_period_hours=2).status_code
        == 200
    )
    keyring = service.services.keyring
    doom = dms_actions.tick(service.engine, keyring, utcnow() + timedelta(hours=1, minutes=1))

    # Execute
    own = service.client.post(f"/v1/orgs/{org}/dead-man-switch/heartbeat", headers=service.headers(org))
    foreign = service.client.post(f"/v1/orgs/{org}/dead-man-switch/heartbeat", headers=service.headers(other))
    user_role = service.client.post(
        f"/v1/orgs/{org}/dead-man-switch/heartbeat", headers=service.headers(org, "org_user")
    )
    # Past the first timer's grace period (2 h after it started): without the heartbeat this fires;
    # with it, the interval lapsed again and only a new doom timer starts.
    later = dms_actions.tick(service.engine, keyring, utcnow() + timedelta(hours=3, minutes=2))

    # Assert
    assert [d["state"] for d in doom] == ["doom"]
    assert (
        own.status_code == 200
        and own.json()["state"] == "armed"
        and own.json()["doom_timer_started_at"] is None
    )
    assert foreign.status_code == 403 and user_role.status_code == 403
    assert [entry["state"] for entry in later] == ["doom"]
    with transaction(service.engine) as session:
        assert session.scalar(select(sa.func.count()).select_from(DeadManSwitchFiring)) == 0
    heartbeat = [r for r in _audit(service, org) if r.action == "dms.heartbeat"]
    assert len(heartbeat) == 1 and heartbeat[0].action_data == {"doom_timer_stopped": True}


def test_configuration_is_validated(service: Service) -> None:
    org, other = service.org(), service.org()
    (admin,) = _users(service, org, 1)
    (stranger,) = _users(service, other, 1)
    unknown_action = _configure(service, org, admin, [], actions=["self_destruct"])
    foreign_contact = _configure(service, org, admin, [stranger])
    foreign_admin = _configure(service, org, stranger, [])
    missing = service.client.get(f"/v1/orgs/{org}/dead-man-switch", headers=service.headers(org))
    assert unknown_action.status_code == 422
    assert (
        foreign_contact.status_code == 422
        and "is not a user of organization" in foreign_contact.json()["message"]
    )
    assert foreign_admin.status_code == 422
    assert missing.status_code == 404


def test_the_watcher_inside_serve_fires_a_lapsed_switch_by_itself(
    service_factory: Any, fallback: FakeProvider
) -> None:
    # Prepare: a switch whose heartbeat is long past, no grace period; the service's watcher ticks
    # every 50 ms on the real clock.
    service = service_factory(dms_watch_interval_s=0.05)
    org = service.org()
    (admin,) = _users(service, org, 1)
    from orchestrator.security.dead_man_switch import SwitchSettings

    settings = SwitchSettings(
        admin_user_id=admin, heartbeat_interval_hours=1, grace_period_hours=0, actions=["disable_fallback"]
    )
    with transaction(service.engine) as session:
        dms_actions.configure(session, org, settings, now=utcnow() - timedelta(hours=2))

    # Execute: wait (bounded) for the watcher to fire.
    deadline = time.monotonic() + 10
    state = None
    while time.monotonic() < deadline:
        with transaction(service.engine) as session:
            state = dms_actions.status(session, org, utcnow())["state"]
        if state == "fired":
            break
        time.sleep(0.05)
    refused = service.chat(org)

    # Assert: fired by serve's own watcher, which also dropped the organization's cached state.
    assert state == "fired"
    assert refused.status_code == 502 and fallback.received == []
