"""Budget alerts as data: a budget crossing 80 % (``near_cap``) or 100 % (``exhausted``) of its cap.

``record_crossings`` is the one place a crossing is noticed. The ledger calls it inside the
transaction of the charge (or cap change) that crossed, after its own writes, so the alert
commits or rolls back with them. A crossing is recorded once: a row in ``privacy_budget_alerts``
unique per (organization, model type, unit, threshold, cap), inserted with ``ON CONFLICT DO
NOTHING``, then one audit record; a raised cap is a new cap and alerts again when crossed.
The thresholds are ``privacy.ledger``'s statuses (``status_of``), so an alert and ``budget show``
never disagree about when a budget became ``near_cap`` or ``exhausted``.

``_announce`` appends ``accute.privacy.budget.near_cap`` / ``accute.privacy.budget.exhausted`` to
the hub's outbox in the same transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.orm import Session

from schema import audit
from schema.models import PrivacyBudgetAlert

#: Thresholds in the order a budget reaches them; level 1 is near_cap, level 2 exhausted.
THRESHOLDS: tuple[str, ...] = ("near_cap", "exhausted")
_LEVEL = {"ok": 0, "near_cap": 1, "exhausted": 2}
_ALERTS: Table = PrivacyBudgetAlert.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Crossing:
    """A threshold crossed: what was recorded (and audited) in the caller's transaction."""

    organization_id: uuid.UUID
    model_type: str
    unit: str
    threshold: str
    epsilon: float
    epsilon_cap: float
    delta: float
    ledger_event_id: int | None


def _level(status: str) -> int:
    return _LEVEL[status]


def record_crossings(
    session: Session,
    *,
    organization_id: uuid.UUID,
    model_type: str,
    unit: str,
    status_before: str,
    status_after: str,
    epsilon: float,
    epsilon_cap: float,
    delta: float,
    ledger_event_id: int | None = None,
) -> list[Crossing]:
    """Record each threshold between ``status_before`` (exclusive) and ``status_after`` (inclusive).

    Cheap when nothing is crossed (the usual charge): two dictionary lookups, no statement.
    """
    low, high = _level(status_before), _level(status_after)
    if high <= low:
        return []
    crossed = []
    for threshold in THRESHOLDS[low:high]:
        crossing = Crossing(
            organization_id, model_type, unit, threshold, epsilon, epsilon_cap, delta, ledger_event_id
        )
        if _insert(session, crossing):
            _audit(session, crossing)
            _announce(session, crossing)
            crossed.append(crossing)
    return crossed


@cache
def _insert_statement(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    names = ("id", "organization_id", "model_type", "unit", "threshold", "epsilon", "epsilon_cap", "delta")
    values = {name: bindparam(name, type_=_ALERTS.c[name].type) for name in names}
    values["ledger_event_id"] = bindparam("ledger_event_id", type_=_ALERTS.c.ledger_event_id.type)
    return insert(_ALERTS).values(values).on_conflict_do_nothing().returning(_ALERTS.c.id)


def _insert(session: Session, crossing: Crossing) -> bool:
    """True when the row is new (False: this threshold of this cap was recorded before)."""
    params = {
        "id": uuid.uuid4(),
        "organization_id": crossing.organization_id,
        "model_type": crossing.model_type,
        "unit": crossing.unit,
        "threshold": crossing.threshold,
        "epsilon": crossing.epsilon,
        "epsilon_cap": crossing.epsilon_cap,
        "delta": crossing.delta,
        "ledger_event_id": crossing.ledger_event_id,
    }
    statement = _insert_statement(session.get_bind().dialect.name)
    return session.execute(statement, params).scalar_one_or_none() is not None


def _audit(session: Session, crossing: Crossing) -> None:
    from privacy.ledger import finite_or_inf

    audit.append(
        session,
        organization_id=crossing.organization_id,
        action=f"privacy_budget.{crossing.threshold}",
        resource_type="privacy_budget",
        resource_id=None,
        data={
            "model_type": crossing.model_type,
            "unit": crossing.unit,
            "threshold": crossing.threshold,
            "epsilon": finite_or_inf(crossing.epsilon),
            "epsilon_cap": crossing.epsilon_cap,
            "delta": crossing.delta,
            "ledger_event_id": crossing.ledger_event_id,
        },
    )


def _announce(session: Session, crossing: Crossing) -> None:
    """``accute.privacy.budget.<threshold>`` in the outbox, in the same transaction, so the hub's
    event exists exactly when the alert does (the relay publishes it after the commit)."""
    from schema import events
    from schema.hub_events import BudgetCrossing

    events.append(
        session,
        event_type=f"accute.privacy.budget.{crossing.threshold}",
        organization_id=crossing.organization_id,
        payload=BudgetCrossing(
            model_type=crossing.model_type,
            privacy_unit=crossing.unit,
            threshold=crossing.threshold,
            epsilon_spent=crossing.epsilon,
            epsilon_cap=crossing.epsilon_cap,
            delta=crossing.delta,
            ledger_event_id=crossing.ledger_event_id,
        ),
    )


def alert_counts(session: Session) -> list[tuple[str, str, int]]:
    """(model type, threshold, alerts recorded) over every organization, sorted."""
    a = PrivacyBudgetAlert
    query = (
        select(a.model_type, a.threshold, func.count())
        .group_by(a.model_type, a.threshold)
        .order_by(a.model_type, a.threshold)
    )
    return [(model_type, threshold, int(n)) for model_type, threshold, n in session.execute(query)]
