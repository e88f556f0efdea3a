"""The dead man's switch's I/O: configure, heartbeat, the watcher's tick, firing and reversal.

``orchestrator.security.dead_man_switch.evaluate`` decides; this module reads the rows it needs and
carries the decision out, each organization in its own transaction (one organization's failure,
e.g. a KEK that is not reachable for the key rotation, does not hold up the others' switches).

Firing applies the configured actions and records them in one ``dead_man_switch_firings`` row:

- ``pause_training``: federated admission skips the organization (``schema.restrictions``);
- ``disable_providers`` / ``disable_fallback``: the cascade uses neither its provider configs (their
  keys are never decrypted) nor the platform fallback;
- ``rotate_data_key``: a new data key (``KeyRing.rotate_data_key``) re-encrypts its provider keys;
- ``notify_contacts``: :func:`notify_escalation_contacts` (the hub event goes there).

Every step is audited (``dms.*`` records, ids and counts only). Firing is idempotent: the config
row is locked and an organization has at most one unreversed firing (a partial unique index), so a
second watcher, a second worker or a second tick does nothing more. A platform admin's
:func:`reverse` lifts the restrictions and re-arms the switch; the rotated data key stays (going
back would revive the key the switch retired) and notifications cannot be unsent.

Time is always a parameter (``now``); the watcher passes its clock, tests any instant.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from orchestrator.keys import KeyRing, KeyUnusableError
from orchestrator.security import dead_man_switch as dms
from orchestrator.security import threat_intel
from schema import audit, events
from schema.db import transaction
from schema.errors import AccuteError, InvalidInputError, NotFoundError
from schema.models import DeadManSwitchConfig, DeadManSwitchFiring, Organization, User
from schema.timeutil import iso, utcnow

log = logging.getLogger("accute.dms")

RESOURCE = "dead_man_switch"
Clock = Callable[[], datetime]


def _config(session: Session, organization_id: uuid.UUID, *, lock: bool = False) -> DeadManSwitchConfig:
    query = select(DeadManSwitchConfig).where(DeadManSwitchConfig.organization_id == organization_id)
    row = session.scalars(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFoundError(
            f"organization {organization_id} has no dead man's switch; configure one with "
            "`accute-fl dms configure` or PUT /v1/orgs/{org}/dead-man-switch"
        )
    return row


def _active_firing(
    session: Session, organization_id: uuid.UUID, *, lock: bool = False
) -> DeadManSwitchFiring | None:
    query = select(DeadManSwitchFiring).where(
        DeadManSwitchFiring.organization_id == organization_id, DeadManSwitchFiring.reversed_at.is_(None)
    )
    return session.scalars(query.with_for_update() if lock else query).first()


def _schedule(row: DeadManSwitchConfig) -> dms.Schedule:
    return dms.Schedule(row.heartbeat_interval_hours, row.grace_period_hours, bool(row.is_active))


def _check_users(session: Session, organization_id: uuid.UUID, settings: dms.SwitchSettings) -> None:
    if session.get(Organization, organization_id) is None:
        raise NotFoundError(f"organization {organization_id} does not exist")
    wanted = {settings.admin_user_id, *settings.escalation_contacts}
    found = set(
        session.scalars(select(User.id).where(User.organization_id == organization_id, User.id.in_(wanted)))
    )
    missing = sorted(str(u) for u in wanted - found)
    if missing:
        raise InvalidInputError(
            f"user {missing[0]} is not a user of organization {organization_id}; the admin and the "
            "escalation contacts must be users of the organization (`accute-fl user list --org`)"
        )
    # Threat intelligence: the doom notice must not go to an address listed since the user was made.
    for user_id, email in session.execute(select(User.id, User.email).where(User.id.in_(sorted(wanted)))):
        listed = threat_intel.email_listed(session, email)
        if listed is not None:
            raise threat_intel.ThreatListedError(
                f"user {user_id} has an email address listed in threat intelligence; choose another "
                "admin or escalation contact for the dead man's switch"
            )


def configure(
    session: Session,
    organization_id: uuid.UUID,
    settings: dms.SwitchSettings,
    *,
    now: datetime,
    user_id: uuid.UUID | None = None,
) -> DeadManSwitchConfig:
    """Create or replace the organization's switch; configuring it counts as a heartbeat.

    A switch that has fired stays fired (only a platform admin's reversal lifts it).
    """
    _check_users(session, organization_id, settings)
    row = session.scalars(
        select(DeadManSwitchConfig)
        .where(DeadManSwitchConfig.organization_id == organization_id)
        .with_for_update()
    ).first()
    created = row is None
    if row is None:
        row = DeadManSwitchConfig(organization_id=organization_id)
        session.add(row)
    row.admin_user_id = settings.admin_user_id
    row.heartbeat_interval_hours = settings.heartbeat_interval_hours
    row.grace_period_hours = settings.grace_period_hours
    row.actions = list(settings.actions)
    row.escalation_contacts = [str(c) for c in settings.escalation_contacts]
    row.recovery_instructions = settings.recovery_instructions
    row.is_active = settings.is_active
    row.last_heartbeat = now
    row.doom_timer_started_at = None
    session.flush()
    _audit_step(
        session,
        row,
        "dms.configured",
        {
            "created": created,
            "is_active": settings.is_active,
            "heartbeat_interval_hours": settings.heartbeat_interval_hours,
            "grace_period_hours": settings.grace_period_hours,
            "actions": list(settings.actions),
            "escalation_contacts": len(settings.escalation_contacts),
        },
        user_id,
    )
    return row


def status(session: Session, organization_id: uuid.UUID, now: datetime) -> dict[str, Any]:
    """The switch's configuration, its state at ``now`` and what a firing holds in force."""
    row = _config(session, organization_id)
    firing = _active_firing(session, organization_id)
    decision = dms.evaluate(
        _schedule(row), row.last_heartbeat, row.doom_timer_started_at, firing is not None, now
    )
    return {
        "organization_id": str(organization_id),
        "state": decision.state,
        "is_active": bool(row.is_active),
        "admin_user_id": str(row.admin_user_id),
        "heartbeat_interval_hours": row.heartbeat_interval_hours,
        "grace_period_hours": row.grace_period_hours,
        "actions": list(row.actions or []),
        "escalation_contacts": list(row.escalation_contacts or []),
        "recovery_instructions": row.recovery_instructions,
        "last_heartbeat": iso(row.last_heartbeat),
        "doom_timer_started_at": iso(row.doom_timer_started_at),
        "next_deadline": iso(decision.next_deadline),
        "firing": _firing_dict(firing) if firing is not None else None,
    }


def _firing_dict(row: DeadManSwitchFiring) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "fired_at": iso(row.fired_at),
        "doom_timer_started_at": iso(row.doom_timer_started_at),
        "training_paused": bool(row.training_paused),
        "providers_disabled": bool(row.providers_disabled),
        "fallback_disabled": bool(row.fallback_disabled),
        "rotated_key_version": row.rotated_key_version,
        "notified_contacts": row.notified_contacts,
        "reversed_at": iso(row.reversed_at),
    }


def heartbeat(
    session: Session, organization_id: uuid.UUID, *, now: datetime, user_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """The admin is alive: the interval starts again and a running doom timer stops."""
    row = _config(session, organization_id, lock=True)
    stopped = row.doom_timer_started_at is not None
    row.last_heartbeat = now
    row.doom_timer_started_at = None
    session.flush()
    _audit_step(session, row, "dms.heartbeat", {"doom_timer_stopped": stopped}, user_id)
    return status(session, organization_id, now)


# -- the watcher -----------------------------------------------------------------------------------
def tick(engine: Engine, keyring: KeyRing | None, now: datetime) -> list[dict[str, Any]]:
    """Evaluate every active switch at ``now``: start doom timers, fire what is due.

    Returns one entry per switch that changed (``doom`` started or ``fired``). Each organization
    has its own transaction; one that fails is logged and left for the next tick.
    """
    with transaction(engine) as session:
        organizations = list(
            session.scalars(
                select(DeadManSwitchConfig.organization_id).where(DeadManSwitchConfig.is_active.is_(True))
            )
        )
    changed = []
    for organization_id in organizations:
        try:
            with transaction(engine) as session:
                entry = _tick_one(session, keyring, organization_id, now)
        except Exception as exc:  # the next tick tries again; the others go on
            log.error("dead man's switch of %s: %s: %s", organization_id, type(exc).__name__, exc)
            continue
        if entry is not None:
            changed.append(entry)
    return changed


def _tick_one(
    session: Session, keyring: KeyRing | None, organization_id: uuid.UUID, now: datetime
) -> dict[str, Any] | None:
    row = _config(session, organization_id, lock=True)
    firing = _active_firing(session, organization_id)
    decision = dms.evaluate(
        _schedule(row), row.last_heartbeat, row.doom_timer_started_at, firing is not None, now
    )
    if decision.start_doom_timer:
        row.doom_timer_started_at = decision.doom_timer_started_at
        session.flush()
        _audit_step(
            session,
            row,
            "dms.doom_timer_started",
            {
                "last_heartbeat": iso(row.last_heartbeat),
                "fires_at": iso(decision.next_deadline),
            },
        )
    if decision.fire:
        assert decision.doom_timer_started_at is not None
        fired = fire(session, keyring, row, decision.doom_timer_started_at, now)
        return {"organization_id": str(organization_id), "state": dms.FIRED, "firing": _firing_dict(fired)}
    if decision.start_doom_timer:
        return {
            "organization_id": str(organization_id),
            "state": dms.DOOM,
            "fires_at": iso(decision.next_deadline),
        }
    return None


def _audit_step(
    session: Session,
    row: DeadManSwitchConfig,
    action: str,
    data: dict[str, Any],
    user_id: uuid.UUID | None = None,
) -> None:
    """One ``dms.*`` audit record about the switch ``row`` (ids and counts only)."""
    audit.append(
        session,
        organization_id=row.organization_id,
        action=action,
        resource_type=RESOURCE,
        resource_id=row.id,
        user_id=user_id,
        data=data,
    )


def fire(
    session: Session, keyring: KeyRing | None, row: DeadManSwitchConfig, doom_started: datetime, now: datetime
) -> DeadManSwitchFiring:
    """Apply the configured actions once; an unreversed firing already there is returned as is."""
    existing = _active_firing(session, row.organization_id)
    if existing is not None:
        return existing
    actions = set(row.actions or [])
    firing = DeadManSwitchFiring(
        organization_id=row.organization_id,
        config_id=row.id,
        doom_timer_started_at=doom_started,
        fired_at=now,
        training_paused=dms.PAUSE_TRAINING in actions,
        providers_disabled=dms.DISABLE_PROVIDERS in actions,
        fallback_disabled=dms.DISABLE_FALLBACK in actions,
        notified_contacts=0,
    )
    session.add(firing)
    session.flush()  # the partial unique index refuses a concurrent second firing here
    step = {"firing_id": str(firing.id)}
    if firing.training_paused:
        _audit_step(session, row, "dms.training_paused", step)
    if firing.providers_disabled:
        _audit_step(session, row, "dms.providers_disabled", step)
    if firing.fallback_disabled:
        _audit_step(session, row, "dms.fallback_disabled", step)
    if dms.ROTATE_DATA_KEY in actions:
        # In a savepoint: a KEK that is not reachable (``keyring`` None: a watcher on a host
        # without it) must not hold up the other actions; the failure is audited.
        try:
            if keyring is None:
                raise KeyUnusableError("the KEK is not reachable on this host")
            with session.begin_nested():
                version = keyring.rotate_data_key(session, row.organization_id)  # audited there too
        except AccuteError as exc:
            log.error("dead man's switch of %s could not rotate the data key: %s", row.organization_id, exc)
            _audit_step(session, row, "dms.data_key_rotation_failed", {**step, "error": exc.code})
        else:
            firing.rotated_key_version = version
            _audit_step(session, row, "dms.data_key_rotated", {**step, "version": version})
    if dms.NOTIFY_CONTACTS in actions:
        firing.notified_contacts = notify_escalation_contacts(session, row, firing)
    session.flush()
    _audit_step(
        session,
        row,
        "dms.fired",
        {
            **step,
            "actions": [a for a in dms.ACTIONS if a in actions],
            "doom_timer_started_at": iso(doom_started),
            "last_heartbeat": iso(row.last_heartbeat),
        },
    )
    log.warning("dead man's switch of %s fired: %s", row.organization_id, ", ".join(sorted(actions)))
    return firing


def notify_escalation_contacts(
    session: Session, row: DeadManSwitchConfig, firing: DeadManSwitchFiring
) -> int:
    """Tell the escalation contacts the switch fired; returns how many were notified.

    The notification is an ``accute.security.dead_man_switch.fired`` hub event in this same
    transaction (the relay publishes it; the hub resolves the contacts' ids to people), beside the
    audit record. Contacts are named by user id and counted, never by address.
    """
    contacts = [str(c) for c in (row.escalation_contacts or [])]
    payload = {
        "firing_id": str(firing.id),
        "switch_id": str(row.id),
        "fired_at": iso(firing.fired_at),
        "escalation_contacts": contacts,
        "contact_count": len(contacts),
        "actions": list(row.actions or []),
    }
    _audit_step(session, row, "dms.triggered", payload)
    events.append(
        session,
        event_type="accute.security.dead_man_switch.fired",
        organization_id=row.organization_id,
        payload=payload,
        correlation_id=str(firing.id),
    )
    return len(contacts)


def reverse(
    session: Session,
    organization_id: uuid.UUID,
    *,
    now: datetime,
    by: str,
    user_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """A platform admin lifts a firing's restrictions and re-arms the switch (``now`` is its new
    heartbeat). Nothing fired: nothing changes (``reversed`` false), so a retry is harmless."""
    row = _config(session, organization_id, lock=True)
    firing = _active_firing(session, organization_id, lock=True)
    if firing is None:
        return {"organization_id": str(organization_id), "reversed": False, "undone": [], "kept": []}
    firing.reversed_at, firing.reversed_by = now, by[:255]
    row.last_heartbeat, row.doom_timer_started_at = now, None
    undone = [
        name
        for name, applied in (
            (dms.PAUSE_TRAINING, firing.training_paused),
            (dms.DISABLE_PROVIDERS, firing.providers_disabled),
            (dms.DISABLE_FALLBACK, firing.fallback_disabled),
        )
        if applied
    ]
    kept = []
    if firing.rotated_key_version is not None:
        kept.append(dms.ROTATE_DATA_KEY)  # the old key stays retired
    if firing.notified_contacts:
        kept.append(dms.NOTIFY_CONTACTS)
    session.flush()
    _audit_step(
        session, row, "dms.reversed", {"firing_id": str(firing.id), "undone": undone, "kept": kept}, user_id
    )
    return {"organization_id": str(organization_id), "reversed": True, "undone": undone, "kept": kept}


async def watch(
    engine: Engine,
    keyring: KeyRing,
    interval_s: float,
    *,
    clock: Clock = utcnow,
    on_change: Callable[[list[dict[str, Any]]], None] | None = None,
) -> None:
    """Tick every ``interval_s`` seconds until cancelled (``serve``'s background task)."""
    import anyio

    while True:
        try:
            changed = await anyio.to_thread.run_sync(tick, engine, keyring, clock())
            if changed and on_change is not None:
                on_change(changed)
        except Exception as exc:  # a database outage must not end the watcher
            log.error("dead man's switch watcher: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(interval_s)
