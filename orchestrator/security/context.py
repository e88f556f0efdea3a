"""What the zero-trust policy knows about users, organizations and addresses, held in memory.

Read from the tables other layers write (anomaly detection writes ``security_anomalies``,
behavioural biometrics ``behavioral_biometrics``, device enrolment ``trustedDevices``) every
``ACCUTE_SECURITY_CONTEXT_REFRESH_S`` seconds by the gate's refresher thread, never per request:

- blocks: unresolved anomalies (``resolution`` NULL) with ``auto_blocked``, whatever their age,
  by user, organization and address (``details.address``, or ``details.ip`` / ``details.client_ip``);
- recent anomalies: severities of unresolved anomalies younger than the policy's window, by user
  (rows naming one), by address (rows naming an address but no user) and by organization (rows
  naming neither: organization-wide, e.g. a volume spike);
- behaviour: each user's latest ``behavioral_biometrics`` row within the window (risk, flag);
- devices: each user's enrolled devices, by fingerprint and by id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, select

from schema.db import transaction
from schema.models import BehavioralBiometrics, SecurityAnomaly, TrustedDevice
from schema.security_anomalies import block_expired, target_of
from schema.timeutil import as_utc, utcnow


@dataclass
class SecurityContext:
    blocked_users: set[uuid.UUID] = field(default_factory=set)
    blocked_orgs: set[uuid.UUID] = field(default_factory=set)
    blocked_addresses: set[str] = field(default_factory=set)
    blocked_subjects: set[str] = field(default_factory=set)
    """Token subjects (``principal:<sub>`` anomalies: repeated privilege probes by one token)."""
    user_anomalies: dict[uuid.UUID, tuple[str, ...]] = field(default_factory=dict)
    org_anomalies: dict[uuid.UUID, tuple[str, ...]] = field(default_factory=dict)
    address_anomalies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    behaviour: dict[uuid.UUID, tuple[float, bool]] = field(default_factory=dict)
    devices: dict[uuid.UUID, dict[str, uuid.UUID]] = field(default_factory=dict)
    """user -> {fingerprint or device id text: device id}."""

    @property
    def empty(self) -> bool:
        """Nothing flagged and no device enrolled: every lookup would come back clean."""
        return not (
            self.blocked_users
            or self.blocked_subjects
            or self.blocked_orgs
            or self.blocked_addresses
            or self.user_anomalies
            or self.org_anomalies
            or self.address_anomalies
            or self.behaviour
            or self.devices
        )

    def blocked(
        self, user: uuid.UUID | None, org: uuid.UUID | None, address: str | None, subject: str | None = None
    ) -> bool:
        return (
            (user is not None and user in self.blocked_users)
            or (subject is not None and subject in self.blocked_subjects)
            or (org is not None and org in self.blocked_orgs)
            or (address is not None and address in self.blocked_addresses)
        )

    def anomalies(
        self, user: uuid.UUID | None, org: uuid.UUID | None, address: str | None = None
    ) -> tuple[str, ...]:
        """Severities of the unresolved recent anomalies of the user, of the organization (those
        naming no user and no address) and of the client address."""
        mine = self.user_anomalies.get(user, ()) if user is not None else ()
        theirs = self.org_anomalies.get(org, ()) if org is not None else ()
        where = self.address_anomalies.get(address, ()) if address is not None else ()
        return mine + theirs + where

    def device(self, user: uuid.UUID | None, presented: str | None) -> tuple[bool | None, uuid.UUID | None]:
        """(known?, device id): None when no device id was presented."""
        if not presented:
            return None, None
        known = self.devices.get(user) if user is not None else None
        device_id = known.get(presented) if known else None
        return device_id is not None, device_id


def load_context(engine: Engine, window_s: float, now: datetime | None = None) -> SecurityContext:
    """A fresh snapshot (four indexed queries)."""
    since = (now or utcnow()) - timedelta(seconds=window_s)
    context = SecurityContext()
    users: dict[uuid.UUID, list[str]] = {}
    orgs: dict[uuid.UUID, list[str]] = {}
    with transaction(engine) as session:
        blocks = session.execute(
            select(SecurityAnomaly.organization_id, SecurityAnomaly.user_id, SecurityAnomaly.details).where(
                SecurityAnomaly.auto_blocked.is_(True), SecurityAnomaly.resolution.is_(None)
            )
        )
        for org, user, details in blocks:
            if block_expired(details, now):
                continue
            kind, value = target_of(details, user)  # a block covers its target only
            if kind == "address":
                context.blocked_addresses.add(value)
            elif kind == "user":
                context.blocked_users.add(uuid.UUID(value))
            elif kind == "principal":
                context.blocked_subjects.add(value)
            else:
                context.blocked_orgs.add(org)
        recent = session.execute(
            select(
                SecurityAnomaly.organization_id,
                SecurityAnomaly.user_id,
                SecurityAnomaly.severity,
                SecurityAnomaly.details,
            ).where(SecurityAnomaly.created_at >= since, SecurityAnomaly.resolution.is_(None))
        )
        addresses: dict[str, list[str]] = {}
        for org, user, severity, details in recent:
            kind, value = target_of(details, user)
            if kind == "user":
                users.setdefault(uuid.UUID(value), []).append(severity)
            elif kind == "address":
                addresses.setdefault(value, []).append(severity)
            elif kind == "org":
                orgs.setdefault(org, []).append(severity)
            # a token subject's anomalies weigh on that token only, through its block
        sessions = session.execute(
            select(
                BehavioralBiometrics.user_id,
                BehavioralBiometrics.risk_score,
                BehavioralBiometrics.anomaly_detected,
                BehavioralBiometrics.created_at,
            ).where(BehavioralBiometrics.created_at >= since)
        )
        latest: dict[uuid.UUID, tuple[datetime, float, bool]] = {}
        for user, risk, flagged, created in sessions:
            stamp = as_utc(created) if created is not None else since
            if user not in latest or stamp >= latest[user][0]:
                latest[user] = (stamp, float(risk or 0), bool(flagged))
        for device_id, user, fingerprint in session.execute(
            select(TrustedDevice.id, TrustedDevice.user_id, TrustedDevice.device_fingerprint)
        ):
            known = context.devices.setdefault(user, {})
            known[fingerprint] = device_id
            known[str(device_id)] = device_id
    context.user_anomalies = {k: tuple(v) for k, v in users.items()}
    context.org_anomalies = {k: tuple(v) for k, v in orgs.items()}
    context.address_anomalies = {k: tuple(v) for k, v in addresses.items()}
    context.behaviour = {user: (risk, flagged) for user, (_, risk, flagged) in latest.items()}
    return context
