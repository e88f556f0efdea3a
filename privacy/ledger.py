"""The privacy ledger and budget caps: the only place that reads or writes epsilon state.

Per (organization, model type, unit of privacy) the ledger is an append-only list of DP events
(``privacy_ledger_events``) and a budget row (``privacy_budgets``) with the cap (epsilon, delta)
and the cumulative RDP curve of the events. Units ("record", "user", "tenant") never mix: each
event goes to the ledger of its own unit, and each unit has its own epsilon and cap.

Epsilon is always evaluated at the budget's delta (or the platform default, ``Settings.default_delta``,
without one) — never at a run's delta: a run cannot buy itself a weaker guarantee. Epsilon is always recomputed from the events with an
accountant (invariant 2): the stored curve is the ``rdp`` accountant's composition of the same
events in the same order, bit-identical to a replay, and it is rebuilt by replay whenever it is
missing or was computed on another order grid. ``prv`` replays the events every time. Under
``rdp`` a charge (and a cap change) also stores the epsilon it computed for the row's new curve,
with its key (``_stored_epsilon``, revision 0021): ``budget_rows`` shows it where the key matches,
so listing budgets needs no numpy; the cap check never reads it.

The API the federated server calls, each inside the caller's transaction
(``schema.db.transaction``):

- ``project`` / ``would_exceed``: the filter, before a tenant takes part; reads only.
- ``charge``: check and charge one event in one transaction, never over the cap (invariant 3).
  With ``rdp`` the row is locked first and epsilon computed once under the lock (microseconds);
  with ``prv`` epsilon is computed before the lock (it can take seconds) and recomputed under it
  only if the ledger changed meanwhile. A ``NonPrivateEvent`` (epsilon +inf) is recorded without
  a cap check: it is the operator's explicit choice, refusing it would only hide the release, and
  the ledger then reads +inf (exhausted), so every later DP charge in that unit is refused.
  The budget row is created if missing and locked in one statement (``INSERT ... ON CONFLICT DO
  UPDATE ... RETURNING``): a row lock on PostgreSQL; on SQLite the statement is a write, so the
  database's write lock is held before anything is read. Refused, it raises ``BudgetExceededError`` and leaves nothing behind.
- ``spent``, ``history``, ``budget_rows``, ``set_budget``: review and admin.

Call ``charge`` before other audited writes of the same transaction: it locks the budget row and
then the organization's audit chain, and the opposite order in a concurrent transaction could
deadlock (PostgreSQL would abort one of them; nothing is overspent either way).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from decimal import ROUND_UP, Decimal
from functools import cache
from typing import Any

from sqlalchemy import Table, bindparam, delete, exists, func, select, update
from sqlalchemy import insert as insert_into
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from privacy import accounting, alerts, timing
from privacy.accountants import STORED_EPSILON_KEY
from privacy.accounting import FloatArray
from privacy.budget_status import (
    _BUDGET_COLUMNS,
    _BUDGETS,
    _EVENTS,
    NEAR_CAP_SHARE,
    BudgetStatus,
    LedgerPolicy,
    _as_event,
    _Budget,
    _cap,
    _curve,
    _epsilon,
    _events,
    _status,
    budget_rows,
    clean_model_type,
    count_budgets,
    finite_or_inf,
    replay_curve,
    status_of,
)
from privacy.events import (
    UNIT_RECORD,
    UNITS,
    CentralDpEvent,
    DpEvent,
    DpSgdEvent,
    NonPrivateEvent,
    check_delta,
    check_epsilon,
    check_steps,
    check_unit,
)
from schema import audit
from schema.directory import get_organization
from schema.errors import BudgetExceededError, ConflictError, InvalidInputError, NotFoundError
from schema.models import Organization, PrivacyBudget
from schema.timeutil import iso
from schema.validation import parse_uuid

__all__ = [
    "NEAR_CAP_SHARE",
    "BudgetStatus",
    "Charge",
    "ChargeResult",
    "HistoryEntry",
    "LedgerPolicy",
    "Projection",
    "budget_rows",
    "cap_of",
    "charge",
    "charge_many",
    "clean_model_type",
    "count_budgets",
    "finite_or_inf",
    "history",
    "project",
    "project_many",
    "replay_curve",
    "set_budget",
    "spent",
    "status_of",
    "would_exceed",
]

#: ``federated_learning_contributions.privacy_budget_consumed`` is NUMERIC(10, 6).
_CONSUMED_MAX = Decimal("9999.999999")
_CONSUMED_STEP = Decimal("0.000001")


@dataclass(frozen=True)
class Projection:
    """What charging an event would do: the filter's answer, computed before the event happens."""

    organization_id: uuid.UUID
    model_type: str
    unit: str
    epsilon_cap: float
    delta: float
    accountant: str
    epsilon_before: float
    epsilon_after: float

    @property
    def increment(self) -> float:
        return self.epsilon_after - self.epsilon_before

    @property
    def exceeds(self) -> bool:
        return not self.epsilon_after <= self.epsilon_cap


@dataclass(frozen=True)
class ChargeResult:
    """A committed-with-the-transaction charge."""

    event_id: int
    organization_id: uuid.UUID
    model_type: str
    unit: str
    epsilon_cap: float
    delta: float
    accountant: str
    epsilon_before: float
    epsilon_after: float
    contribution_id: uuid.UUID | None
    aggregation_round: int | None

    @property
    def increment(self) -> float:
        return self.epsilon_after - self.epsilon_before


@dataclass(frozen=True)
class HistoryEntry:
    """One event of ``budget history`` with the ledger's epsilon right after it."""

    id: int
    mechanism: str
    unit: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float | None
    contribution_id: str | None
    aggregation_round: int | None
    epsilon_after: float
    created_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- edge validation -------------------------------------------------------------------------


def _check_event(event: object) -> DpEvent:
    if not isinstance(event, DpSgdEvent | CentralDpEvent | NonPrivateEvent):
        raise InvalidInputError(
            f"{type(event).__name__} is not a DP event; use DpSgdEvent, CentralDpEvent or NonPrivateEvent"
        )
    return event


def _one_unit(events: Sequence[DpEvent]) -> str:
    units = {e.unit for e in events}
    if len(units) != 1:
        raise InvalidInputError(
            f"events of units {', '.join(sorted(units)) or 'none'} cannot share one epsilon; project each unit apart"
        )
    return units.pop()


def _check_round(value: int | None) -> int | None:
    return None if value is None else check_steps(value, "aggregation round")


# --- reading a ledger ------------------------------------------------------------------------


#: Organizations per ``IN`` list (SQLite allows 32,766 parameters; PostgreSQL 65,535).
_IN_CHUNK = 1000
_EVENT_COLUMNS = (
    "organization_id",
    "model_type",
    "unit",
    "mechanism",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "clip_norm",
    "contribution_id",
    "aggregation_round",
)


def _budget(session: Session, organization_id: uuid.UUID, model_type: str, unit: str) -> _Budget | None:
    query = select(*_BUDGET_COLUMNS).where(
        PrivacyBudget.organization_id == organization_id,
        PrivacyBudget.model_type == model_type,
        PrivacyBudget.unit == unit,
    )
    row = session.execute(query).one_or_none()
    return None if row is None else _Budget(*row)


def project(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    event: DpEvent | Sequence[DpEvent],
    *,
    policy: LedgerPolicy,
) -> Projection:
    """The filter: epsilon before and after ``event`` (or several of one unit, e.g. a round's
    planned events) against the cap of that unit's ledger, without charging anything.

    Advisory (it takes no lock): ``charge`` checks again under the lock. With ``prv`` it also
    warms the accountant's memo, so the charge finds its epsilon without computing under the lock.
    """
    events = [_check_event(e) for e in (event if isinstance(event, Sequence) else [event])]
    unit = _one_unit(events)
    organization = get_organization(session, organization_id)
    model_type = clean_model_type(model_type)
    budget = _budget(session, organization.id, model_type, unit)
    return _projection(session, organization.id, model_type, unit, budget, events, policy)


def project_many(
    session: Session,
    organization_ids: Iterable[str | uuid.UUID],
    model_type: str,
    events: Sequence[DpEvent],
    *,
    policy: LedgerPolicy,
) -> dict[uuid.UUID, Projection]:
    """``project`` for many tenants at once, by organization id: their budget rows in one query
    (a round's admission projected each tenant with a query of its own). Each organization is
    validated as ``project`` does (``NotFoundError`` for one that does not exist)."""
    events = [_check_event(e) for e in events]
    unit = _one_unit(events)
    model_type = clean_model_type(model_type)
    org_ids = sorted({get_organization(session, org).id for org in organization_ids})
    budgets: dict[uuid.UUID, _Budget] = {}
    for start in range(0, len(org_ids), _IN_CHUNK):
        query = select(*_BUDGET_COLUMNS).where(
            PrivacyBudget.organization_id.in_(org_ids[start : start + _IN_CHUNK]),
            PrivacyBudget.model_type == model_type,
            PrivacyBudget.unit == unit,
        )
        budgets.update({row.organization_id: _Budget(*row) for row in session.execute(query)})
    return {
        org: _projection(session, org, model_type, unit, budgets.get(org), events, policy) for org in org_ids
    }


def _projection(
    session: Session,
    organization_id: uuid.UUID,
    model_type: str,
    unit: str,
    budget: _Budget | None,
    events: Sequence[DpEvent],
    policy: LedgerPolicy,
) -> Projection:
    cap, delta = _cap(budget, policy)
    before_curve = _curve(session, budget)
    after_curve = accounting.compose(events, start=before_curve)
    return Projection(
        organization_id=organization_id,
        model_type=model_type,
        unit=unit,
        epsilon_cap=cap,
        delta=delta,
        accountant=policy.accountant,
        epsilon_before=_epsilon(session, organization_id, model_type, unit, before_curve, delta, policy),
        epsilon_after=_epsilon(
            session, organization_id, model_type, unit, after_curve, delta, policy, events
        ),
    )


def cap_of(
    session: Session, organization_id: uuid.UUID, model_type: str, unit: str, *, policy: LedgerPolicy
) -> tuple[float, float]:
    """(epsilon cap, delta) of one unit's ledger: the budget row's own, else the platform defaults."""
    return _cap(_budget(session, organization_id, clean_model_type(model_type), check_unit(unit)), policy)


def would_exceed(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    event: DpEvent | Sequence[DpEvent],
    *,
    policy: LedgerPolicy,
) -> bool:
    """Would charging ``event`` (or all of several) push the tenant's epsilon for ``model_type``
    over its cap?"""
    return project(session, organization_id, model_type, event, policy=policy).exceeds


def spent(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    *,
    policy: LedgerPolicy,
    unit: str = UNIT_RECORD,
) -> float:
    """The tenant's cumulative epsilon for ``model_type`` in ``unit`` at its budget's delta (0 without events)."""
    organization = get_organization(session, organization_id)
    model_type = clean_model_type(model_type)
    unit = check_unit(unit)
    budget = _budget(session, organization.id, model_type, unit)
    _, delta = _cap(budget, policy)
    return _epsilon(session, organization.id, model_type, unit, _curve(session, budget), delta, policy)


# --- writing a ledger ------------------------------------------------------------------------


# Statements built once (with bind parameters) and reused: a charge is on the server's hot path.
_INSERT_EVENT = insert_into(_EVENTS).values({c: bindparam(c) for c in _EVENT_COLUMNS}).returning(_EVENTS.c.id)
#: Many events in one statement, their ids returned in the order of the parameter list.
_INSERT_EVENTS_IN_ORDER = (
    insert_into(_EVENTS)
    .values({c: bindparam(c) for c in _EVENT_COLUMNS})
    .returning(_EVENTS.c.id, sort_by_parameter_order=True)
)
_UPDATE_CURVE = (
    update(_BUDGETS)
    .where(_BUDGETS.c.id == bindparam("budget_id"))
    .values(
        rdp_curve=bindparam("rdp_curve"),
        rdp_orders_key=bindparam("rdp_orders_key"),
        event_count=bindparam("event_count"),
        last_round=bindparam("last_round"),
        updated_at=func.now(),
        **{
            name: bindparam(name)
            for name in ("epsilon_spent", "epsilon_delta", "epsilon_key", "epsilon_event_count")
        },
    )
)


def _stored_epsilon(epsilon: float, delta: float, event_count: int, policy: LedgerPolicy) -> dict[str, Any]:
    """The budget row's stored-epsilon columns for a curve whose epsilon at ``delta`` is ``epsilon``
    (``budget_status.stored_epsilon`` reads them back). Only the ``rdp`` accountant's value of the
    curve is stored; under ``prv`` the columns are cleared, so a stale value never outlives its curve."""
    if policy.accountant != "rdp":
        return {
            "epsilon_spent": None,
            "epsilon_delta": None,
            "epsilon_key": None,
            "epsilon_event_count": None,
        }
    return {
        "epsilon_spent": epsilon,
        "epsilon_delta": delta,
        "epsilon_key": STORED_EPSILON_KEY,
        "epsilon_event_count": event_count,
    }


def _store_status(session: Session, budget_id: uuid.UUID, status: BudgetStatus, policy: LedgerPolicy) -> None:
    """Store a recomputed status's epsilon in its budget row (a cap change: the delta may be new).
    Nothing under ``prv``: the row keeps the ``rdp`` value of its curve, keyed by its own delta."""
    if policy.accountant == "rdp":
        values = _stored_epsilon(status.epsilon_spent, status.delta, status.events, policy)
        session.execute(update(_BUDGETS).where(_BUDGETS.c.id == budget_id).values(values))


@cache
def _upsert_budget(dialect: str) -> Any:
    """``INSERT ... SELECT ... WHERE`` the organization exists ``ON CONFLICT DO UPDATE ... RETURNING``.

    Checking the organization inside the statement saves a charge the round trip of looking it up.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    organizations = Organization.__table__
    columns = ("id", "organization_id", "model_type", "unit")
    # Parameters may not be named like the columns they fill (SQLAlchemy reserves those names).
    params = {name: bindparam(f"new_{name}", type_=_BUDGETS.c[name].type) for name in columns}
    row = select(*params.values()).where(exists().where(organizations.c.id == params["organization_id"]))
    values = insert(_BUDGETS).from_select(list(columns), row)
    return values.on_conflict_do_update(
        index_elements=["organization_id", "model_type", "unit"],
        set_={"model_type": values.excluded.model_type},
    ).returning(*_BUDGET_COLUMNS)


def _locked_budget(session: Session, organization_id: uuid.UUID, model_type: str, unit: str) -> _Budget:
    """The budget row, created if missing, locked until the end of the transaction.

    One statement, ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``: on PostgreSQL it inserts
    the row or locks the existing one (waiting for a concurrent holder, then seeing its commit);
    on SQLite, being a write, it takes the database's write lock before anything is read. An
    organization that does not exist gets no row: ``NotFoundError``.
    """
    statement = _upsert_budget(session.get_bind().dialect.name)
    params = {
        "new_id": uuid.uuid4(),
        "new_organization_id": organization_id,
        "new_model_type": model_type,
        "new_unit": unit,
    }
    row = session.execute(statement, params).one_or_none()
    if row is None:
        raise NotFoundError(f"organization {organization_id} does not exist; see `accute-fl org list`")
    return _Budget(*row)


@cache
def _record_charge(dialect: str) -> Any:
    """PostgreSQL: the event insert and the curve update in one statement (one round trip), the
    insert as a data-modifying CTE whose id the update returns. None elsewhere (SQLite has no
    data-modifying CTEs; its statements cost no round trip)."""
    if dialect != "postgresql":
        return None
    # Named apart from the budget table's columns, which the update reserves.
    values = {c: bindparam(f"event_{c}", type_=_EVENTS.c[c].type) for c in _EVENT_COLUMNS}
    charged = insert_into(_EVENTS).values(values).returning(_EVENTS.c.id).cte("charged_event")
    return _UPDATE_CURVE.add_cte(charged).returning(select(charged.c.id).scalar_subquery())


def _contribution(
    session: Session, contribution_id: str | uuid.UUID, organization_id: uuid.UUID, model_type: str
) -> uuid.UUID:
    """The id of a contribution of the organization and model type that no event names yet.

    One statement reads the row and whether an event is charged to it (the unique constraint on
    ``contribution_id`` would refuse a second event anyway; this names the problem first)."""
    cid = parse_uuid(contribution_id, "contribution id")
    row = session.execute(_contribution_statements()[0], {"contribution_id": cid}).one_or_none()
    _check_contribution(row, cid, organization_id, model_type)
    return cid


def _check_contribution(row: Any, cid: uuid.UUID, organization_id: uuid.UUID, model_type: str) -> None:
    """Refuse a contribution (``row``: organization_id, model_type, charged; or None) that is not
    the organization's, is for another model type, or is charged already."""
    if row is None or row.organization_id != organization_id:
        raise NotFoundError(f"contribution {cid} does not exist in organization {organization_id}")
    if row.model_type != model_type:
        raise InvalidInputError(
            f"contribution {cid} is for model type '{row.model_type}', not '{model_type}'"
        )
    if row.charged:
        raise ConflictError(f"contribution {cid} is already charged to the privacy ledger; charge it once")


def _set_consumed(session: Session, contribution_id: uuid.UUID, consumed: Decimal) -> None:
    """Write a contribution's ``privacy_budget_consumed`` by id; a copy the session holds as an
    object shows the new value too (without being marked changed)."""
    from schema.models import FederatedLearningContribution

    session.execute(_contribution_statements()[1], {"row_id": contribution_id, "consumed": consumed})
    held = session.identity_map.get(identity_key(FederatedLearningContribution, contribution_id))
    if held is not None:
        set_committed_value(held, "privacy_budget_consumed", consumed)


@cache
def _contribution_statements() -> tuple[Any, Any, Any]:
    """(a contribution's organization, model type and whether an event is charged to it; the
    update of its ``privacy_budget_consumed``; the first's columns and id for many ids), built on first use: the vamn models load only
    for charges that have a contribution."""
    from schema.models import FederatedLearningContribution

    contributions: Table = FederatedLearningContribution.__table__  # type: ignore[assignment]
    charged = exists().where(_EVENTS.c.contribution_id == contributions.c.id)
    state = select(
        contributions.c.organization_id, contributions.c.model_type, charged.label("charged")
    ).where(contributions.c.id == bindparam("contribution_id"))
    consumed = (
        update(contributions)
        .where(contributions.c.id == bindparam("row_id"))
        .values(privacy_budget_consumed=bindparam("consumed"))
    )
    states = select(
        contributions.c.id,
        contributions.c.organization_id,
        contributions.c.model_type,
        charged.label("charged"),
    ).where(contributions.c.id.in_(bindparam("ids", expanding=True)))
    return state, consumed, states


def _consumed(increment: float) -> Decimal:
    """The increment as NUMERIC(10, 6) for display: rounded up, so it never understates."""
    if not math.isfinite(increment) or increment >= float(_CONSUMED_MAX):
        return _CONSUMED_MAX
    return min(_CONSUMED_MAX, Decimal(repr(max(increment, 0.0))).quantize(_CONSUMED_STEP, rounding=ROUND_UP))


def _state(budget: _Budget | None) -> tuple[int, bytes | None, str | None, float | None, float | None]:
    """What epsilon depends on in a budget row: equal states give equal epsilons."""
    if budget is None:
        return (0, None, None, None, None)
    return (budget.event_count, budget.rdp_curve, budget.rdp_orders_key, budget.epsilon_cap, budget.delta)


def _before_after(
    session: Session,
    organization_id: uuid.UUID,
    model_type: str,
    budget: _Budget | None,
    event: DpEvent,
    policy: LedgerPolicy,
) -> tuple[float, float, float, float, FloatArray]:
    """(cap, delta, epsilon before, epsilon after, curve after) of charging ``event`` onto ``budget``."""
    cap, delta = _cap(budget, policy)
    before_curve = _curve(session, budget)
    after_curve = before_curve + accounting.event_rdp(event)
    before = _epsilon(session, organization_id, model_type, event.unit, before_curve, delta, policy)
    after = _epsilon(session, organization_id, model_type, event.unit, after_curve, delta, policy, [event])
    return cap, delta, before, after, after_curve


def charge(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    event: DpEvent,
    contribution_id: str | uuid.UUID | None = None,
    aggregation_round: int | None = None,
    *,
    policy: LedgerPolicy,
) -> ChargeResult:
    """``_charge``, its latency observed for ``/metrics`` (``privacy.timing.CHARGES``)."""
    started = time.perf_counter()
    try:
        return _charge(
            session, organization_id, model_type, event, contribution_id, aggregation_round, policy=policy
        )
    finally:
        timing.CHARGES.observe(time.perf_counter() - started)


def _charge(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    event: DpEvent,
    contribution_id: str | uuid.UUID | None = None,
    aggregation_round: int | None = None,
    *,
    policy: LedgerPolicy,
) -> ChargeResult:
    """Check and charge one DP event to the tenant's ledger of the event's unit, in the caller's transaction.

    Raises ``BudgetExceededError`` (nothing written) if epsilon after the event would exceed the
    cap; otherwise appends the event, updates the stored curve, sets the contribution's
    ``privacy_budget_consumed`` to the increment and appends an audit record. A
    ``NonPrivateEvent`` is never refused (see the module docstring).

    With ``rdp``: one statement creates-or-locks the budget row (and checks the organization),
    epsilon before and after comes from the stored curve under the lock, and on PostgreSQL one
    more statement inserts the event and updates the curve. With ``prv``: epsilon is computed
    from an unlocked read first and recomputed under the row lock only if the row changed in
    between, so the slow accountant does not hold the lock.
    """
    event = _check_event(event)
    model_type = clean_model_type(model_type)
    aggregation_round = _check_round(aggregation_round)
    unit = event.unit

    if policy.accountant == "rdp":
        # Epsilon from the stored curve takes microseconds: lock first (the statement also checks
        # the organization) and compute once, under the lock.
        org_id = parse_uuid(organization_id, "organization id")
        budget = _locked_budget(session, org_id, model_type, unit)
        cap, delta, before, after, after_curve = _before_after(
            session, org_id, model_type, budget, event, policy
        )
    else:
        org_id = get_organization(session, organization_id).id
        unlocked = _budget(session, org_id, model_type, unit)
        cap, delta, before, after, after_curve = _before_after(
            session, org_id, model_type, unlocked, event, policy
        )
        budget = _locked_budget(session, org_id, model_type, unit)
        if _state(budget) != _state(unlocked):  # charged or re-capped meanwhile: recompute under the lock
            cap, delta, before, after, after_curve = _before_after(
                session, org_id, model_type, budget, event, policy
            )
    contribution_ref = (
        _contribution(session, contribution_id, org_id, model_type) if contribution_id is not None else None
    )
    planned = _Planned(org_id, model_type, event, budget, cap, delta, before, after, after_curve)
    refusal = _refusal(planned)
    if refusal is not None:
        if budget.blank:  # leave nothing behind, even if the caller commits after catching the error
            session.execute(delete(_BUDGETS).where(_BUDGETS.c.id == budget.id))
        raise refusal
    event_params, curve_params = _charge_params(planned, contribution_ref, aggregation_round, policy)
    together = _record_charge(session.get_bind().dialect.name)
    if together is not None:
        params = curve_params | {f"event_{name}": value for name, value in event_params.items()}
        event_id = session.execute(together, params).scalar_one()
    else:
        event_id = session.execute(_INSERT_EVENT, event_params).scalar_one()
        session.execute(_UPDATE_CURVE, curve_params)
    if contribution_ref is not None:
        _set_consumed(session, contribution_ref, _consumed(after - before))
    entry = _charged_entry(planned, event_id, contribution_ref, aggregation_round, policy)
    audit.append(
        session,
        organization_id=org_id,
        action=entry.action,
        resource_type=entry.resource_type,
        resource_id=entry.resource_id,
        data=entry.data,
    )
    return _charged(session, planned, event_id, contribution_ref, aggregation_round, policy)


@dataclass(frozen=True)
class _Planned:
    """One charge, decided under its budget row's lock: the row, and epsilon before and after."""

    organization_id: uuid.UUID
    model_type: str
    event: DpEvent
    budget: _Budget
    cap: float
    delta: float
    before: float
    after: float
    after_curve: FloatArray


def _refusal(planned: _Planned) -> BudgetExceededError | None:
    """The error refusing the charge (nothing to write), or None. A ``NonPrivateEvent`` is never refused."""
    if isinstance(planned.event, NonPrivateEvent) or planned.after <= planned.cap:
        return None
    return BudgetExceededError(
        f"charging this event to organization {planned.organization_id} / '{planned.model_type}' "
        f"({planned.event.unit} level) would raise epsilon from {planned.before:.4g} to {planned.after:.4g}, "
        f"over its cap {planned.cap:g} (delta {planned.delta:g}); nothing was charged. Use more noise or "
        "fewer steps, or raise the cap with `accute-fl budget set`"
    )


def _charge_params(
    planned: _Planned, contribution_ref: uuid.UUID | None, aggregation_round: int | None, policy: LedgerPolicy
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters of the event's insert and of the budget row's curve update."""
    event, budget = planned.event, planned.budget
    last_round = budget.last_round
    if aggregation_round is not None:
        last_round = max(aggregation_round, last_round or 0)
    event_params = {
        "organization_id": planned.organization_id,
        "model_type": planned.model_type,
        "unit": event.unit,
        "mechanism": event.mechanism,
        "noise_multiplier": event.noise_multiplier,
        "sample_rate": event.sample_rate,
        "steps": event.steps,
        "clip_norm": event.clip_norm,
        "contribution_id": contribution_ref,
        "aggregation_round": aggregation_round,
    }
    curve_params = {
        "budget_id": budget.id,
        "rdp_curve": planned.after_curve.tobytes(),
        "rdp_orders_key": accounting.ORDERS_KEY,
        "event_count": budget.event_count + 1,
        "last_round": last_round,
        **_stored_epsilon(planned.after, planned.delta, budget.event_count + 1, policy),
    }
    return event_params, curve_params


def _charged_entry(
    planned: _Planned,
    event_id: int,
    contribution_ref: uuid.UUID | None,
    aggregation_round: int | None,
    policy: LedgerPolicy,
) -> audit.AuditEntry:
    """The charge's audit record (the organization's chain)."""
    event = planned.event
    return audit.AuditEntry(
        action="privacy.charged",
        resource_type="privacy_budget",
        resource_id=planned.budget.id,
        data={
            "model_type": planned.model_type,
            "unit": event.unit,
            "event_id": event_id,
            "mechanism": event.mechanism,
            "noise_multiplier": event.noise_multiplier,
            "sample_rate": event.sample_rate,
            "steps": event.steps,
            "clip_norm": event.clip_norm,
            "contribution_id": str(contribution_ref) if contribution_ref else None,
            "aggregation_round": aggregation_round,
            "epsilon_before": finite_or_inf(planned.before),
            "epsilon_after": finite_or_inf(planned.after),
            "epsilon_cap": planned.cap,
            "delta": planned.delta,
            "accountant": policy.accountant,
        },
    )


def _charged(
    session: Session,
    planned: _Planned,
    event_id: int,
    contribution_ref: uuid.UUID | None,
    aggregation_round: int | None,
    policy: LedgerPolicy,
) -> ChargeResult:
    """After the event is written: its threshold alerts (``privacy.alerts``), and the result."""
    alerts.record_crossings(
        session,
        organization_id=planned.organization_id,
        model_type=planned.model_type,
        unit=planned.event.unit,
        status_before=status_of(planned.before, planned.cap),
        status_after=status_of(planned.after, planned.cap),
        epsilon=planned.after,
        epsilon_cap=planned.cap,
        delta=planned.delta,
        ledger_event_id=event_id,
    )
    return ChargeResult(
        event_id=event_id,
        organization_id=planned.organization_id,
        model_type=planned.model_type,
        unit=planned.event.unit,
        epsilon_cap=planned.cap,
        delta=planned.delta,
        accountant=policy.accountant,
        epsilon_before=planned.before,
        epsilon_after=planned.after,
        contribution_id=contribution_ref,
        aggregation_round=aggregation_round,
    )


@dataclass(frozen=True)
class Charge:
    """One event of ``charge_many``: the organization charged and the contribution it pays for."""

    organization_id: uuid.UUID
    event: DpEvent
    contribution_id: uuid.UUID | None = None


def charge_many(
    session: Session,
    model_type: str,
    charges: Sequence[Charge],
    aggregation_round: int | None = None,
    *,
    policy: LedgerPolicy,
) -> list[ChargeResult | BudgetExceededError]:
    """``charge`` of each of ``charges`` in the caller's transaction, in far fewer statements: a
    round's dispatch charges every instructed tenant at once. One result per charge, in order: its
    ``ChargeResult``, or the ``BudgetExceededError`` that refused it (nothing written for it; the
    others are charged). Any other error (an organization or contribution that does not exist, a
    contribution charged already) raises before anything is written.

    Equal to calling ``charge`` for each in turn (tested): each budget row is created-or-locked by
    its own statement, in (organization, unit) order, epsilon comes from its stored curve under
    that lock, and then the contributions are checked in one query, the events inserted in one
    statement, the curves and contributions updated in one executemany each, and the audit records
    appended to every chain by one ``audit.append_chains``. Under ``prv``, or when two charges
    share a budget row (the second must see the first's curve), it simply calls ``charge`` in turn.
    """
    started = time.perf_counter()
    model_type = clean_model_type(model_type)
    aggregation_round = _check_round(aggregation_round)
    items = [
        Charge(parse_uuid(c.organization_id, "organization id"), _check_event(c.event), c.contribution_id)
        for c in charges
    ]
    keys = [(c.organization_id, c.event.unit) for c in items]
    if policy.accountant != "rdp" or len(set(keys)) != len(keys):
        return [_charge_or_refusal(session, model_type, c, aggregation_round, policy) for c in items]
    try:
        return _charge_many_rdp(session, model_type, items, aggregation_round, policy)
    finally:
        if items:
            share = (time.perf_counter() - started) / len(items)
            for _ in items:
                timing.CHARGES.observe(share)


def _charge_or_refusal(
    session: Session, model_type: str, item: Charge, aggregation_round: int | None, policy: LedgerPolicy
) -> ChargeResult | BudgetExceededError:
    try:
        return charge(
            session,
            item.organization_id,
            model_type,
            item.event,
            item.contribution_id,
            aggregation_round,
            policy=policy,
        )
    except BudgetExceededError as exc:
        return exc


def _charge_many_rdp(
    session: Session,
    model_type: str,
    items: list[Charge],
    aggregation_round: int | None,
    policy: LedgerPolicy,
) -> list[ChargeResult | BudgetExceededError]:
    order = sorted(range(len(items)), key=lambda i: (items[i].organization_id, items[i].event.unit))
    planned: dict[int, _Planned] = {}
    for i in order:  # a fixed lock order, as concurrent dispatches and single charges take them
        item = items[i]
        budget = _locked_budget(session, item.organization_id, model_type, item.event.unit)
        cap, delta, before, after, after_curve = _before_after(
            session, item.organization_id, model_type, budget, item.event, policy
        )
        planned[i] = _Planned(
            item.organization_id, model_type, item.event, budget, cap, delta, before, after, after_curve
        )
    contributions = _contributions(session, items, model_type)
    results: list[ChargeResult | BudgetExceededError | None] = [None] * len(items)
    written: list[int] = []
    for i in order:
        refusal = _refusal(planned[i])
        if refusal is None:
            written.append(i)
            continue
        results[i] = refusal
        if planned[i].budget.blank:  # leave nothing behind, as ``charge`` does
            session.execute(delete(_BUDGETS).where(_BUDGETS.c.id == planned[i].budget.id))
    if written:
        params = [
            _charge_params(planned[i], contributions.get(i), aggregation_round, policy) for i in written
        ]
        event_ids = [
            row[0]
            for row in session.execute(_INSERT_EVENTS_IN_ORDER, [event_params for event_params, _ in params])
        ]
        session.execute(_UPDATE_CURVE, [curve_params for _, curve_params in params])
        consumed = [
            {"row_id": contributions[i], "consumed": _consumed(planned[i].after - planned[i].before)}
            for i in written
            if i in contributions
        ]
        if consumed:
            session.execute(_contribution_statements()[1], consumed)
        chains: dict[uuid.UUID, list[audit.AuditEntry]] = {}
        for i, event_id in zip(written, event_ids, strict=True):
            entry = _charged_entry(planned[i], event_id, contributions.get(i), aggregation_round, policy)
            chains.setdefault(planned[i].organization_id, []).append(entry)
        audit.append_chains(session, chains)
        for i, event_id in zip(written, event_ids, strict=True):
            results[i] = _charged(
                session, planned[i], event_id, contributions.get(i), aggregation_round, policy
            )
    return [r for r in results if r is not None]


def _contributions(session: Session, items: list[Charge], model_type: str) -> dict[int, uuid.UUID]:
    """``_contribution`` for every charge that names one, in one query: index -> contribution id."""
    wanted = {
        i: parse_uuid(c.contribution_id, "contribution id")
        for i, c in enumerate(items)
        if c.contribution_id is not None
    }
    if not wanted:
        return {}
    rows = {
        row.id: row
        for row in session.execute(_contribution_statements()[2], {"ids": sorted(set(wanted.values()))})
    }
    for i, cid in wanted.items():
        _check_contribution(rows.get(cid), cid, items[i].organization_id, model_type)
    if len(set(wanted.values())) != len(wanted):
        raise ConflictError("a contribution is named by two charges; charge it once")
    return wanted


def set_budget(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    epsilon_cap: float,
    delta: float,
    *,
    policy: LedgerPolicy,
    unit: str | None = None,
) -> list[BudgetStatus]:
    """Set the cap (epsilon, delta) of one tenant and model type in ``unit`` (None: in every unit,
    each its own ledger with this cap — units never share one epsilon); audited. One status per unit set.

    A cap below what is already spent is allowed (it stops further charges: status ``exhausted``).
    """
    epsilon_cap = check_epsilon(epsilon_cap, "epsilon cap")
    delta = check_delta(delta)
    organization = get_organization(session, organization_id)
    model_type = clean_model_type(model_type)
    units = UNITS if unit is None else (check_unit(unit),)
    statuses = []
    for each in units:
        budget = _locked_budget(session, organization.id, model_type, each)
        previous = {"epsilon_cap": budget.epsilon_cap, "delta": budget.delta}
        session.execute(
            update(_BUDGETS)
            .where(_BUDGETS.c.id == budget.id)
            .values(epsilon_cap=epsilon_cap, delta=delta, updated_at=func.now())
        )
        budget = replace(budget, epsilon_cap=epsilon_cap, delta=delta)
        audit.append(
            session,
            organization_id=organization.id,
            action="privacy_budget.set",
            resource_type="privacy_budget",
            resource_id=budget.id,
            data={
                "model_type": model_type,
                "unit": each,
                "previous": previous,
                "epsilon_cap": epsilon_cap,
                "delta": delta,
            },
        )
        status = _status(session, budget, policy)
        _store_status(session, budget.id, status, policy)
        # Thresholds are per cap: under this cap, record any not recorded yet (a lowered cap can
        # make a budget near_cap or exhausted without a charge).
        alerts.record_crossings(
            session,
            organization_id=organization.id,
            model_type=model_type,
            unit=each,
            status_before="ok",
            status_after=status.status,
            epsilon=status.epsilon_spent,
            epsilon_cap=status.epsilon_cap,
            delta=status.delta,
        )
        statuses.append(status)
    return statuses


# --- review ----------------------------------------------------------------------------------


def history(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    *,
    policy: LedgerPolicy,
    unit: str | None = None,
) -> list[HistoryEntry]:
    """The tenant's events for ``model_type`` in order (one unit, or every unit with ``unit`` None),
    each with the epsilon of its own unit's ledger right after it.

    With ``prv`` every prefix is replayed (slow for long ledgers); ``rdp`` adds curves.
    """
    organization = get_organization(session, organization_id)
    model_type = clean_model_type(model_type)
    if unit is not None:
        check_unit(unit)
    rows = _events(session, organization.id, model_type, unit)
    deltas: dict[str, float] = {}
    curves: dict[str, FloatArray] = {}
    prefixes: dict[str, list[DpEvent]] = {}
    entries: list[HistoryEntry] = []
    for row in rows:
        if row.unit not in deltas:
            deltas[row.unit] = _cap(_budget(session, organization.id, model_type, row.unit), policy)[1]
        event = _as_event(row)
        curve = curves[row.unit] = curves.get(row.unit, accounting.empty_curve()) + accounting.event_rdp(
            event
        )
        prefix = prefixes.setdefault(row.unit, [])
        prefix.append(event)
        if policy.accountant == "rdp":
            eps = accounting.epsilon_from_rdp(curve, deltas[row.unit])
        else:
            eps = accounting.prv_epsilon(prefix, deltas[row.unit])
        entries.append(
            HistoryEntry(
                id=row.id,
                mechanism=row.mechanism,
                unit=row.unit,
                noise_multiplier=row.noise_multiplier,
                sample_rate=row.sample_rate,
                steps=row.steps,
                clip_norm=row.clip_norm,
                contribution_id=str(row.contribution_id) if row.contribution_id else None,
                aggregation_round=row.aggregation_round,
                epsilon_after=eps,
                created_at=iso(row.created_at),
            )
        )
    return entries
