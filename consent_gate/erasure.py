"""The stores that hold a user's data: what each holds (access) and what erasure does to it.

Every place the product keeps something about a person is one :class:`Store` in :data:`STORES`,
so an access request lists the same places an erasure walks, and a new store (the hub outbox,
when it exists) is added with :func:`register_store` rather than by editing the erasure.

What erasure does, store by store (the response names each, with row counts):

- ``users``: the email becomes ``erased-<id>@erased.invalid``; the row stays (foreign keys).
- ``user_consents``: every consent withdrawn, IP address and user agent wiped.
- ``consent_events``: IP address, user agent and free-text reasons wiped; the grant/withdraw facts
  stay (the consent gate's history of what was allowed when).
- ``data_subject_requests``: the details the user wrote are emptied.
- ``exports``: earlier access/portability exports (``response_details``) are redacted.
- ``consent_snapshot_members``: kept. They hold the pseudonymous id only; the lineage "which model
  versions trained with this person" is the accountability record the admin must keep (GDPR art.
  17(3)(b)/(e)); once the user row holds no personal data the id identifies nobody.
- ``llm_usage_log`` and ``agentSessions``: ``user_id`` set to NULL; the rows stay for billing.
- ``behavioral_biometrics``, ``sessions``, ``trustedDevices``: deleted (a device is first unlinked
  from the zero-trust access log that references it).
- ``zero_trust_access_log``, ``security_anomalies``: kept, pseudonymous ids only, under the
  security records' own retention (the devices they pointed at are unlinked above).
- ``immutable_audit_log``: records kept (they carry ids only); the values sealed under the user's
  data key become unreadable when ``personal_data_keys`` shreds it.
- ``personal_data_keys``: the user's wrapped key destroyed.
- ``hub_outbox``: kept. Its payloads hold ids, codes and numbers only (every event type's model
  forbids anything else, ``schema.hub_events``), so the consent and request events naming the user
  carry the pseudonymous id alone; the hub learns of the erasure from ``accute.dsr.completed``.

A new store joins with :func:`register_store`; an access request then lists it and every erasure
walks it, with no change here.

Erasing rows does not erase bytes: SQLite keeps deleted content in free pages, PostgreSQL keeps
dead row versions (and plain ``VACUUM`` leaves their bytes in the page's free space). :func:`compact`
rewrites the tables the stores name once the erasure has committed (:mod:`consent_gate.compaction`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, func, or_, select, update
from sqlalchemy.orm import Session

from consent_gate import compaction, records
from consent_gate.lineage import user_lineage
from schema import personal_data
from schema.models import (
    AgentSession,
    BehavioralBiometrics,
    ConsentEvent,
    ConsentSnapshotMember,
    DataSubjectRequest,
    HubOutbox,
    ImmutableAuditLog,
    LlmUsageLog,
    SecurityAnomaly,
    TrustedDevice,
    User,
    UserConsent,
    UserSession,
    ZeroTrustAccessLog,
)

ERASED_EMAIL_DOMAIN = "erased.invalid"
EXPORT_REQUEST_TYPES = ("access", "portability")


@dataclass(frozen=True)
class ErasureContext:
    """The request being carried out and what earlier steps reported."""

    request: DataSubjectRequest
    user: User


@dataclass(frozen=True)
class Store:
    """One place that can hold a user's data.

    ``describe`` says what it holds about the user (counts, never the data itself: the export
    carries the data); ``erase`` does the store's part of an erasure and reports it.
    """

    name: str
    holds: str
    describe: Callable[[Session, User], dict[str, Any]]
    erase: Callable[[Session, ErasureContext], dict[str, Any]]
    tables: tuple[str, ...] = ()
    """Tables whose old row versions still hold the user's bytes after ``erase`` (rewritten or
    deleted text, a destroyed key): :func:`compact` rewrites them once the erasure commits."""


def _affected(result: Any) -> int:
    """Rows an UPDATE or DELETE touched (``Session.execute`` is typed as returning a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount)


def _count(session: Session, model: Any, *conditions: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)


# -- users ---------------------------------------------------------------------------------------
def _describe_user(session: Session, user: User) -> dict[str, Any]:
    erased = user.email.endswith("@" + ERASED_EMAIL_DOMAIN)
    return {"rows": 1, "email": "anonymized" if erased else "present"}


def _erase_user(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    ctx.user.email = f"erased-{ctx.user.id.hex}@{ERASED_EMAIL_DOMAIN}"
    return {"action": "email anonymized", "rows": 1}


# -- consents ------------------------------------------------------------------------------------
def _consents_of(user: User) -> tuple[Any, ...]:
    return (UserConsent.organization_id == user.organization_id, UserConsent.user_id == user.id)


def _describe_consents(session: Session, user: User) -> dict[str, Any]:
    granted = _count(session, UserConsent, *_consents_of(user), UserConsent.consent_given.is_(True))
    with_origin = _count(
        session,
        UserConsent,
        *_consents_of(user),
        or_(UserConsent.ip_address.is_not(None), UserConsent.user_agent.is_not(None)),
    )
    return {
        "rows": _count(session, UserConsent, *_consents_of(user)),
        "granted": granted,
        "with_ip_or_agent": with_origin,
    }


def _erase_consents(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    user = ctx.user
    granted = [
        c.consent_type
        for c in records.current_consents(session, user.organization_id, user.id)
        if c.consent_given
    ]
    reason = f"dsr:{ctx.request.request_type}:{ctx.request.id}"
    withdrawn = [
        t
        for t in granted
        if records.withdraw(session, user.organization_id, user.id, t, reason=reason).changed
    ]
    rows = session.execute(
        update(UserConsent).where(*_consents_of(user)).values(ip_address=None, user_agent=None)
    )
    return {
        "action": "withdrawn; IP address and user agent wiped",
        "rows": _affected(rows),
        "withdrawn": withdrawn,
    }


def _events_of(user: User) -> tuple[Any, ...]:
    return (ConsentEvent.organization_id == user.organization_id, ConsentEvent.user_id == user.id)


def _describe_events(session: Session, user: User) -> dict[str, Any]:
    reasons = session.scalars(
        select(ConsentEvent.reason).where(*_events_of(user), ConsentEvent.reason.is_not(None))
    )
    free_text = sum(1 for r in reasons if not records.SYSTEM_REASON.match(r or ""))
    return {"rows": _count(session, ConsentEvent, *_events_of(user)), "free_text_reasons": free_text}


def _erase_events(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    events = session.scalars(select(ConsentEvent).where(*_events_of(ctx.user))).all()
    for event in events:
        event.ip_address, event.user_agent = None, None
        if event.reason is not None and not records.SYSTEM_REASON.match(event.reason):
            event.reason = None
    return {"action": "IP address, user agent and free-text reasons wiped; facts kept", "rows": len(events)}


# -- requests and exports ------------------------------------------------------------------------
def _requests_of(user: User) -> tuple[Any, ...]:
    return (DataSubjectRequest.organization_id == user.organization_id, DataSubjectRequest.user_id == user.id)


def _erase_requests(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    requests = session.scalars(select(DataSubjectRequest).where(*_requests_of(ctx.user))).all()
    for request in requests:
        request.request_details = {}
        own = request.id == ctx.request.id
        if (
            not own
            and request.request_type not in EXPORT_REQUEST_TYPES
            and request.response_details is not None
        ):
            request.response_details = {"redacted_by_erasure": str(ctx.request.id)}
    return {"action": "details the user wrote emptied", "rows": len(requests)}


def _exports_of(user: User) -> tuple[Any, ...]:
    return (
        *_requests_of(user),
        DataSubjectRequest.request_type.in_(EXPORT_REQUEST_TYPES),
        DataSubjectRequest.response_details.is_not(None),
    )


def _describe_exports(session: Session, user: User) -> dict[str, Any]:
    responses = session.scalars(select(DataSubjectRequest.response_details).where(*_exports_of(user)))
    return {"rows": sum(1 for r in responses if "export" in (r or {}))}


def _erase_exports(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    exports = session.scalars(select(DataSubjectRequest).where(*_exports_of(ctx.user))).all()
    for export in exports:
        export.response_details = {"redacted_by_erasure": str(ctx.request.id)}
    return {"action": "redacted", "rows": len(exports)}


# -- lineage -------------------------------------------------------------------------------------
def _members_of(user: User) -> tuple[Any, ...]:
    return (ConsentSnapshotMember.user_id == user.id,)


def _keep_members(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    lineage = user_lineage(session, ctx.user.organization_id, ctx.user.id)
    return {
        "action": "kept: pseudonymous id only, the model lineage the admin must keep",
        "rows": len(lineage),
    }


# -- usage and platform tables -------------------------------------------------------------------
# Most of these stores are one table selected by the user: counting, detaching, deleting and keeping
# them differ only in the statement, so each is built from the conditions that pick the user's rows.
Conditions = Callable[[User], tuple[Any, ...]]


def _counted(model: Any, conditions: Conditions) -> Callable[[Session, User], dict[str, Any]]:
    def describe(session: Session, user: User) -> dict[str, Any]:
        return {"rows": _count(session, model, *conditions(user))}

    return describe


def _detached(
    model: Any, conditions: Conditions, kept_for: str
) -> Callable[[Session, ErasureContext], dict[str, Any]]:
    def erase(session: Session, ctx: ErasureContext) -> dict[str, Any]:
        result = session.execute(update(model).where(*conditions(ctx.user)).values(user_id=None))
        return {"action": f"user_id cleared; rows kept {kept_for}", "rows": _affected(result)}

    return erase


def _deleted(model: Any, conditions: Conditions) -> Callable[[Session, ErasureContext], dict[str, Any]]:
    def erase(session: Session, ctx: ErasureContext) -> dict[str, Any]:
        return {
            "action": "deleted",
            "rows": _affected(session.execute(delete(model).where(*conditions(ctx.user)))),
        }

    return erase


def _kept(
    model: Any, conditions: Conditions, why: str
) -> Callable[[Session, ErasureContext], dict[str, Any]]:
    def erase(session: Session, ctx: ErasureContext) -> dict[str, Any]:
        return {"action": f"kept: {why}", "rows": _count(session, model, *conditions(ctx.user))}

    return erase


def _usage_of(user: User) -> tuple[Any, ...]:
    return (LlmUsageLog.organization_id == user.organization_id, LlmUsageLog.user_id == user.id)


def _agent_sessions_of(user: User) -> tuple[Any, ...]:
    return (AgentSession.organization_id == user.organization_id, AgentSession.user_id == user.id)


def _sessions_of(user: User) -> tuple[Any, ...]:
    return (UserSession.user_id == user.id,)


def _biometrics_of(user: User) -> tuple[Any, ...]:
    by_session = BehavioralBiometrics.session_id.in_(select(UserSession.id).where(*_sessions_of(user)))
    return (or_(BehavioralBiometrics.user_id == user.id, by_session),)


def _devices_of(user: User) -> tuple[Any, ...]:
    return (TrustedDevice.user_id == user.id,)


def _erase_devices(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    devices = select(TrustedDevice.id).where(*_devices_of(ctx.user))
    unlinked = session.execute(
        update(ZeroTrustAccessLog).where(ZeroTrustAccessLog.device_id.in_(devices)).values(device_id=None)
    )
    done = _deleted(TrustedDevice, _devices_of)(session, ctx)
    return {**done, "access_log_rows_unlinked": _affected(unlinked)}


# -- security records (kept) ---------------------------------------------------------------------
def _access_log_of(user: User) -> tuple[Any, ...]:
    return (ZeroTrustAccessLog.organization_id == user.organization_id, ZeroTrustAccessLog.user_id == user.id)


def _anomalies_of(user: User) -> tuple[Any, ...]:
    return (SecurityAnomaly.organization_id == user.organization_id, SecurityAnomaly.user_id == user.id)


SECURITY_RETENTION = "security record under its own retention (pseudonymous id"


# -- audit log and keys --------------------------------------------------------------------------
def _audit_of(user: User) -> tuple[Any, ...]:
    return (
        ImmutableAuditLog.organization_id == user.organization_id,
        or_(ImmutableAuditLog.user_id == user.id, ImmutableAuditLog.resource_id == user.id),
    )


def _describe_audit(session: Session, user: User) -> dict[str, Any]:
    data = session.scalars(select(ImmutableAuditLog.action_data).where(*_audit_of(user))).all()
    sealed = sum(
        1 for d in data for k, v in (d or {}).items() if k.endswith("_sealed") and personal_data.is_sealed(v)
    )
    return {"rows": len(data), "sealed_values": sealed}


def _keep_audit(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    described = _describe_audit(session, ctx.user)
    return {
        "action": "kept (ids only); sealed values unreadable once the user's key is shredded",
        "rows": described["rows"],
        "sealed_values": described["sealed_values"],
    }


def _describe_keys(session: Session, user: User) -> dict[str, Any]:
    return personal_data.key_state(session, user.id)


def _erase_keys(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    shredded = personal_data.shred(session, ctx.user.id)
    return {"action": "shredded" if shredded else "no live key", "rows": int(shredded)}


# -- hub outbox ----------------------------------------------------------------------------------
def _outbox_of(user: User) -> tuple[Any, ...]:
    return (
        HubOutbox.organization_id == user.organization_id,
        HubOutbox.payload["user_id"].as_string() == str(user.id),
    )


def _describe_outbox(session: Session, user: User) -> dict[str, Any]:
    return {"rows": _count(session, HubOutbox, *_outbox_of(user)), "holds": "pseudonymous user id only"}


def _erase_outbox(session: Session, ctx: ErasureContext) -> dict[str, Any]:
    # Payloads are validated against models that admit ids, codes and numbers only
    # (schema.hub_events): nothing here identifies the person once the user row is anonymized.
    # The hub learns of the erasure from this request's own accute.dsr.completed event.
    return {
        "action": "kept: events carry the pseudonymous user id only (no email, name or text); "
        "the hub is told by accute.dsr.completed",
        "rows": _count(session, HubOutbox, *_outbox_of(ctx.user)),
    }


STORES: list[Store] = [
    Store(
        "user_consents",
        "consents, with the IP address and user agent they were given from",
        _describe_consents,
        _erase_consents,
        ("user_consents",),
    ),
    Store(
        "consent_events",
        "every grant and withdrawal, with origin and reason",
        _describe_events,
        _erase_events,
        ("consent_events",),
    ),
    Store(
        "data_subject_requests",
        "the user's requests and the details written in them",
        _counted(DataSubjectRequest, _requests_of),
        _erase_requests,
        ("data_subject_requests",),
    ),
    Store(
        "exports",
        "access/portability exports kept in the requests' responses",
        _describe_exports,
        _erase_exports,
        ("data_subject_requests",),
    ),
    Store(
        "consent_snapshot_members",
        "the consent snapshots (model lineage) that contained the user",
        _counted(ConsentSnapshotMember, _members_of),
        _keep_members,
    ),
    Store(
        "llm_usage_log",
        "LLM calls made by the user",
        _counted(LlmUsageLog, _usage_of),
        _detached(LlmUsageLog, _usage_of, "for billing"),
    ),
    Store(
        "agentSessions",
        "conversations with the agents",
        _counted(AgentSession, _agent_sessions_of),
        _detached(AgentSession, _agent_sessions_of, "for the usage log"),
    ),
    Store(
        "behavioral_biometrics",
        "behaviour hashes and device fingerprints of the user's sessions",
        _counted(BehavioralBiometrics, _biometrics_of),
        _deleted(BehavioralBiometrics, _biometrics_of),
        ("behavioral_biometrics",),
    ),
    Store(
        "sessions",
        "login sessions",
        _counted(UserSession, _sessions_of),
        _deleted(UserSession, _sessions_of),
        ("sessions",),
    ),
    Store(
        "trustedDevices",
        "enrolled devices and their fingerprints",
        _counted(TrustedDevice, _devices_of),
        _erase_devices,
        ("trustedDevices",),
    ),
    Store(
        "zero_trust_access_log",
        "access decisions about the user's requests",
        _counted(ZeroTrustAccessLog, _access_log_of),
        _kept(ZeroTrustAccessLog, _access_log_of, f"{SECURITY_RETENTION}, devices unlinked)"),
    ),
    Store(
        "security_anomalies",
        "anomalies detected on the user's activity",
        _counted(SecurityAnomaly, _anomalies_of),
        _kept(SecurityAnomaly, _anomalies_of, f"{SECURITY_RETENTION})"),
    ),
    Store(
        "immutable_audit_log",
        "audit records about the user (ids; sealed values)",
        _describe_audit,
        _keep_audit,
    ),
    Store(
        "hub_outbox",
        "events for the Fin(Ai)d hub naming the user by id (consent and request events)",
        _describe_outbox,
        _erase_outbox,
    ),
    Store(
        "personal_data_keys",
        "the user's data key (wrapped by the KEK)",
        _describe_keys,
        _erase_keys,
        ("personal_data_keys",),
    ),
    Store("users", "the profile: email address", _describe_user, _erase_user, ("users",)),
]


def register_store(store: Store) -> None:
    """Add a store (or replace the one of the same name, e.g. the ``hub_outbox`` hook).

    A new store goes before ``personal_data_keys`` and ``users``, which an erasure handles last.
    The hub's outbox registers itself this way when its module is imported, e.g.::

        erasure.register_store(Store(
            "hub_outbox", "events for the Fin(Ai)d hub",
            describe=count_user_events,        # rows of pending and delivered events naming the user
            erase=tombstone_user_events,       # payloads emptied (ids kept), undelivered ones dropped
            tables=("hub_outbox",),            # rewritten by compact() after the erasure commits
        ))

    Events already delivered to the hub are outside this database: the outbox's ``erase`` must also
    queue an erasure event for the hub, and its report say so.
    """
    for index, existing in enumerate(STORES):
        if existing.name == store.name:
            STORES[index] = store
            return
    STORES.insert(len(STORES) - 2, store)


def describe(session: Session, user: User) -> list[dict[str, Any]]:
    """Every store with what it holds about the user (an access request lists these)."""
    return [{"store": s.name, "holds": s.holds, **s.describe(session, user)} for s in STORES]


def erase(session: Session, request: DataSubjectRequest, user: User) -> dict[str, dict[str, Any]]:
    """Walk every store in order; returns what each did."""
    ctx = ErasureContext(request, user)
    done: dict[str, dict[str, Any]] = {}
    for store in STORES:
        done[store.name] = store.erase(session, ctx)
        session.flush()
    return done


def holders(session: Session, user: User) -> list[str]:
    """The stores that hold something about the user right now."""
    return [entry["store"] for entry in describe(session, user) if _holds_something(entry)]


def _holds_something(entry: dict[str, Any]) -> bool:
    if entry["store"] == "personal_data_keys":
        return bool(entry.get("state") == "active")
    return int(entry.get("rows", 0)) > 0


def compact(engine: Engine, wait_s: float = compaction.SNAPSHOT_WAIT_S) -> dict[str, Any]:
    """Make the erased bytes unreadable in the database files, after the erasure has committed.

    Rewrites the tables the stores name (:attr:`Store.tables`); see :mod:`consent_gate.compaction`
    for what each backend does and what stays out of reach (WAL archives, backups).
    """
    tables = sorted({table for store in STORES for table in store.tables})
    return compaction.compact(engine, tables, wait_s)
