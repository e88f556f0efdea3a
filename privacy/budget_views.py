"""Privacy budgets for the admin console: the overview and one budget's ledger, as view models.

The numbers are ``privacy.ledger``'s own (``budget_rows`` and ``history``, the functions behind
``accute-fl budget show`` and ``budget history``), so the API, the dashboard and the CLI agree to
the last bit; this module only names organizations, filters by status and paginates.
An epsilon of a non-private release (+inf) is the string ``"inf"``, as in the CLI's JSON.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from privacy import alerts, ledger
from privacy.ledger import LedgerPolicy, finite_or_inf
from schema import listings
from schema.directory import get_organization
from schema.errors import InvalidInputError
from schema.models import PrivacyBudgetAlert
from schema.pagination import Page, check_window, page_of
from schema.timeutil import iso
from schema.validation import one_of, parse_uuid

BUDGET_STATUSES = ("ok", "near_cap", "exhausted")

#: A JSON-safe epsilon: a number, or "inf" after a non-private release.
Epsilon = float | Literal["inf"]


class BudgetView(BaseModel):
    """One row of ``budget show``: a tenant's ledger of one model type and unit of privacy."""

    organization_id: str
    organization: str | None
    model_type: str
    unit: str
    epsilon_cap: float
    delta: float
    epsilon_spent: Epsilon
    epsilon_remaining: Epsilon
    events: int
    last_round: int | None
    status: Literal["ok", "near_cap", "exhausted"]


class LedgerEventView(BaseModel):
    """One DP event of a ledger, in ledger order, with that unit's epsilon right after it."""

    id: int
    run: str | None
    mechanism: str
    unit: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float | None
    contribution_id: str | None
    aggregation_round: int | None
    epsilon_after: Epsilon
    created_at: str | None


class BudgetDetail(BaseModel):
    """One tenant's budget for one model type: a status per unit, and the events of every unit."""

    organization_id: str
    organization: str | None
    model_type: str
    accountant: str
    budgets: list[BudgetView]
    events: list[LedgerEventView]


def organization_names(session: Session, ids: set[str]) -> dict[str, str]:
    """Organization id (text) -> name, for the ids given (``budget show`` reads the same function)."""
    return listings.organization_names(session, ids)


def _view(status: ledger.BudgetStatus, name: str | None) -> BudgetView:
    row = status.as_dict()
    return BudgetView(
        **row
        | {
            "organization": name,
            "epsilon_spent": finite_or_inf(status.epsilon_spent),
            "epsilon_remaining": finite_or_inf(status.epsilon_remaining),
        }
    )


def list_budgets(
    session: Session,
    *,
    policy: LedgerPolicy,
    organization_id: str | uuid.UUID | None = None,
    model_type: str | None = None,
    status: str | None = None,
    unit: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[BudgetView]:
    """Budgets sorted as ``budget show`` sorts them (organization id, model type, unit), filtered,
    one page of them with the total that matched."""
    if status is not None:
        one_of(status, BUDGET_STATUSES, "status")
    if status is None:  # the window and the total straight from SQL: epsilon of one page only
        limit, offset = check_window(limit, offset)
        window = ledger.budget_rows(
            session,
            organization_id,
            policy=policy,
            model_type=model_type,
            unit=unit,
            limit=limit,
            offset=offset,
        )
        total = ledger.count_budgets(session, organization_id, model_type=model_type, unit=unit)
        page = Page[ledger.BudgetStatus](items=window, total=total, limit=limit, offset=offset)
    else:  # a status needs every budget's epsilon (memoized per ledger state)
        rows = ledger.budget_rows(session, organization_id, policy=policy, model_type=model_type, unit=unit)
        page = page_of([r for r in rows if r.status == status], limit, offset)
    names = organization_names(session, {r.organization_id for r in page.items})
    return Page[BudgetView](
        items=[_view(r, names.get(r.organization_id)) for r in page.items],
        total=page.total,
        limit=page.limit,
        offset=page.offset,
    )


def budget_detail(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    *,
    policy: LedgerPolicy,
    unit: str | None = None,
) -> BudgetDetail:
    """One tenant's budget of ``model_type``: its status per unit (``budget show``) and its events
    in ledger order with epsilon after each (``budget history``), with the run each paid for.

    An organization without a budget row or event for this model type answers its default cap
    (``budget show`` lists no row for it) and no events.
    """
    from fl_server.event_runs import runs_of_events  # reads federation tables only

    organization = get_organization(session, organization_id)
    model_type = ledger.clean_model_type(model_type)
    statuses = ledger.budget_rows(session, organization.id, policy=policy, model_type=model_type, unit=unit)
    entries = ledger.history(session, organization.id, model_type, policy=policy, unit=unit)
    if not statuses and not entries:
        check_model_type(session, model_type)
    runs = runs_of_events(session, model_type, entries)
    name = organization.name
    return BudgetDetail(
        organization_id=str(organization.id),
        organization=name,
        model_type=model_type,
        accountant=policy.accountant,
        budgets=[_view(s, name) for s in statuses],
        events=[
            LedgerEventView(
                **e.as_dict() | {"run": runs.get(e.id), "epsilon_after": finite_or_inf(e.epsilon_after)}
            )
            for e in entries
        ],
    )


def known_model_types(session: Session) -> set[str]:
    """Model types the consent policy names or some budget or ledger event uses."""
    from consent_gate.policy import ConsentPolicy
    from schema.models import PrivacyBudget, PrivacyLedgerEvent

    known = set(ConsentPolicy.default().model_types)
    known |= set(session.scalars(select(PrivacyBudget.model_type).distinct()))
    known |= set(session.scalars(select(PrivacyLedgerEvent.model_type).distinct()))
    return known


def check_model_type(session: Session, model_type: str) -> None:
    """Refuse an unknown model type with the known ones: a typo must not look like an empty history."""
    known = known_model_types(session)
    if model_type not in known:
        raise InvalidInputError(f"unknown model type '{model_type}'; known: {', '.join(sorted(known))}")


def set_cap(
    session: Session,
    organization_id: str | uuid.UUID,
    model_type: str,
    epsilon_cap: float,
    delta: float,
    *,
    policy: LedgerPolicy,
    unit: str | None = None,
) -> list[BudgetView]:
    """``budget set``: the same function, the same rules (audited; a cap below spending is allowed)."""
    statuses = ledger.set_budget(
        session, organization_id, model_type, epsilon_cap, delta, policy=policy, unit=unit
    )
    names = organization_names(session, {s.organization_id for s in statuses})
    return [_view(s, names.get(s.organization_id)) for s in statuses]


class AlertView(BaseModel):
    id: str
    organization_id: str
    model_type: str
    unit: str
    threshold: Literal["near_cap", "exhausted"]
    epsilon: float | Literal["inf"]
    epsilon_cap: float
    delta: float
    ledger_event_id: int | None
    created_at: str | None


def list_alerts(
    session: Session,
    *,
    organization_id: str | uuid.UUID | None = None,
    threshold: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[AlertView]:
    """Alerts newest first, one page with the total."""
    limit, offset = check_window(limit, offset)
    query = select(PrivacyBudgetAlert)
    if organization_id is not None:
        query = query.where(
            PrivacyBudgetAlert.organization_id == parse_uuid(organization_id, "organization id")
        )
    if threshold is not None:
        query = query.where(PrivacyBudgetAlert.threshold == one_of(threshold, alerts.THRESHOLDS, "threshold"))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    # Newest first; the two thresholds of one charge: exhausted (reached second) first.
    ordered = query.order_by(
        PrivacyBudgetAlert.created_at.desc(), PrivacyBudgetAlert.threshold, PrivacyBudgetAlert.id
    )
    items = [
        AlertView(
            id=str(a.id),
            organization_id=str(a.organization_id),
            model_type=a.model_type,
            unit=a.unit,
            threshold=a.threshold,
            epsilon=finite_or_inf(a.epsilon),
            epsilon_cap=a.epsilon_cap,
            delta=a.delta,
            ledger_event_id=a.ledger_event_id,
            created_at=iso(a.created_at),
        )
        for a in session.scalars(ordered.limit(limit).offset(offset))
    ]
    return Page[AlertView](items=items, total=total, limit=limit, offset=offset)
