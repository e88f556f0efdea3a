"""Budget statuses read with Core: what ``accute-fl budget show``, the admin API and ``/metrics``
list, without the ORM.

The numbers are ``privacy.ledger``'s (it imports everything here): epsilon spent comes from the
accountant on the budget row's stored RDP curve (``rdp``, rebuilt by replay when it is missing or on
another order grid) or from replaying the events (``prv``), never from adding per-round epsilons.
Every function takes a ``Connection`` or a ``Session``: the statements are Core statements on
``schema.tables.privacy``, so a read-only command that lists budgets never imports ``sqlalchemy.orm``
or the mapped classes. The epsilon is numpy's evaluation of the RDP conversion (``privacy.accounting``),
whose ``log``/``log1p`` differ from ``math``'s in the last bit on some CPUs, so it is never redone
without numpy: a budget row stores the epsilon its last charge (or cap change) computed, keyed by
what it depends on (``privacy.accountants.STORED_EPSILON_KEY``, the event count, the delta), and
``budget_rows`` uses it where the key matches; only the other rows import numpy and evaluate
their curves.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, String, Table, func, select, type_coerce

from privacy.accountants import STORED_EPSILON_KEY, check_accountant
from privacy.events import UNIT_RECORD, DpEvent, check_delta, check_epsilon, check_unit, event_from_row
from schema.listings import require_organization
from schema.tables.privacy import privacy_budgets, privacy_ledger_events
from schema.validation import clean_name

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy.orm import Session

    from privacy.accounting import FloatArray
    from schema.config import Settings

    #: Where budgets are read from: a Core connection (``schema.db.reading``) or the ledger's session.
    Reader: TypeAlias = Connection | Session

#: A ledger whose epsilon reaches this share of its cap is reported ``near_cap``.
NEAR_CAP_SHARE = 0.8


@dataclass(frozen=True)
class LedgerPolicy:
    """The platform defaults a ledger falls back on: the cap and delta without a budget row's own,
    and the accountant that enforces caps."""

    default_epsilon_cap: float = 8.0
    default_delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        check_epsilon(self.default_epsilon_cap, "default epsilon cap")
        check_delta(self.default_delta)
        check_accountant(self.accountant)

    @classmethod
    def from_settings(cls, settings: Settings) -> LedgerPolicy:
        return cls(settings.default_epsilon_cap, settings.default_delta, settings.accountant)


@dataclass(frozen=True)
class BudgetStatus:
    """One row of ``budget show``."""

    organization_id: str
    model_type: str
    unit: str
    epsilon_cap: float
    delta: float
    epsilon_spent: float
    epsilon_remaining: float
    events: int
    last_round: int | None
    status: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_model_type(value: str) -> str:
    return clean_name(value, "model type", max_length=100)


def finite_or_inf(value: float) -> float | str:
    """A JSON-safe epsilon: +inf (a non-private release) is written as the string "inf"."""
    return value if math.isfinite(value) else "inf"


# --- reading a ledger ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    """A budget row's state, read with plain columns (the ledger holds no ORM budget objects)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    model_type: str
    unit: str
    epsilon_cap: float | None
    delta: float | None
    rdp_curve: bytes | None
    rdp_orders_key: str | None
    event_count: int
    last_round: int | None

    @property
    def blank(self) -> bool:
        """No events and no cap of its own: the row holds nothing."""
        return not self.event_count and self.epsilon_cap is None and self.delta is None


_BUDGETS: Table = privacy_budgets
_EVENTS: Table = privacy_ledger_events
_BUDGET_COLUMNS = tuple(_BUDGETS.c[name] for name in _Budget.__dataclass_fields__)


def _events(reader: Reader, organization_id: uuid.UUID, model_type: str, unit: str | None) -> list[Row[Any]]:
    """The events of one unit's ledger (or, with ``unit`` None, of every unit), in ledger order:
    rows of every column (read with Core; the ledger writes its events with Core statements only)."""
    query = (
        select(_EVENTS)
        .where(_EVENTS.c.organization_id == organization_id, _EVENTS.c.model_type == model_type)
        .order_by(_EVENTS.c.id)
    )
    if unit is not None:
        query = query.where(_EVENTS.c.unit == unit)
    return list(reader.execute(query))


def _as_event(row: Row[Any]) -> DpEvent:
    return event_from_row(
        row.mechanism, row.noise_multiplier, row.sample_rate, row.steps, row.clip_norm, row.unit
    )


def replay_curve(
    reader: Reader, organization_id: uuid.UUID, model_type: str, unit: str = UNIT_RECORD
) -> FloatArray:
    """The cumulative RDP curve of one unit's ledger rebuilt from every committed event, in order."""
    from privacy import accounting

    query = (
        select(_EVENTS.c.noise_multiplier, _EVENTS.c.sample_rate, _EVENTS.c.steps)
        .where(
            _EVENTS.c.organization_id == organization_id,
            _EVENTS.c.model_type == model_type,
            _EVENTS.c.unit == unit,
        )
        .order_by(_EVENTS.c.id)
    )
    return accounting.compose(reader.execute(query))


def _curve(reader: Reader, budget: _Budget | None) -> FloatArray:
    """The budget row's stored curve when it is on the current order grid, else a replay."""
    import numpy as np

    from privacy import accounting

    if budget is None:
        return accounting.empty_curve()
    if budget.rdp_curve is not None and budget.rdp_orders_key == accounting.ORDERS_KEY:
        return np.frombuffer(budget.rdp_curve, dtype=np.float64).copy()
    return replay_curve(reader, budget.organization_id, budget.model_type, budget.unit)


def _cap(budget: _Budget | None, policy: LedgerPolicy) -> tuple[float, float]:
    cap = budget.epsilon_cap if budget is not None and budget.epsilon_cap is not None else None
    delta = budget.delta if budget is not None and budget.delta is not None else None
    return (
        policy.default_epsilon_cap if cap is None else cap,
        policy.default_delta if delta is None else delta,
    )


def _epsilon(
    reader: Reader,
    organization_id: uuid.UUID,
    model_type: str,
    unit: str,
    curve: FloatArray,
    delta: float,
    policy: LedgerPolicy,
    extra: Sequence[DpEvent] = (),
) -> float:
    from privacy import accounting

    if policy.accountant == "rdp":
        return accounting.epsilon_from_rdp(curve, delta)
    events = [_as_event(row) for row in _events(reader, organization_id, model_type, unit)]
    return accounting.prv_epsilon([*events, *extra], delta)


# --- review ----------------------------------------------------------------------------------


def status_of(spent_eps: float, cap: float) -> str:
    """``ok``, ``near_cap`` (at least ``NEAR_CAP_SHARE`` of the cap) or ``exhausted`` (at the cap)."""
    if spent_eps >= cap:
        return "exhausted"
    if spent_eps >= NEAR_CAP_SHARE * cap:
        return "near_cap"
    return "ok"


def _status_row(budget: _Budget, cap: float, delta: float, spent_eps: float) -> BudgetStatus:
    return BudgetStatus(
        organization_id=_uuid(budget.organization_id)[1],
        model_type=budget.model_type,
        unit=budget.unit,
        epsilon_cap=cap,
        delta=delta,
        epsilon_spent=spent_eps,
        epsilon_remaining=max(0.0, cap - spent_eps),
        events=budget.event_count,
        last_round=budget.last_round,
        status=status_of(spent_eps, cap),
    )


def _status(reader: Reader, budget: _Budget, policy: LedgerPolicy) -> BudgetStatus:
    cap, delta = _cap(budget, policy)
    spent_eps = _epsilon(
        reader,
        budget.organization_id,
        budget.model_type,
        budget.unit,
        _curve(reader, budget),
        delta,
        policy,
    )
    return _status_row(budget, cap, delta, spent_eps)


def _statuses(reader: Reader, budgets: Sequence[_Budget], policy: LedgerPolicy) -> list[BudgetStatus]:
    """``_status`` of many budgets; with ``rdp`` every epsilon comes from one numpy pass over the
    stored curves (bit-identical to one at a time), so thousands of budgets take milliseconds."""
    if policy.accountant != "rdp" or not budgets:
        return [_status(reader, budget, policy) for budget in budgets]
    import numpy as np

    from privacy import accounting

    caps = [_cap(budget, policy) for budget in budgets]
    curves = np.stack([_curve(reader, budget) for budget in budgets])
    spent_all = accounting.epsilons_from_rdp(curves, np.array([delta for _, delta in caps]))
    return [
        _status_row(budget, cap, delta, float(spent_eps))
        for budget, (cap, delta), spent_eps in zip(budgets, caps, spent_all, strict=True)
    ]


#: Epsilon of a ledger state, per process: (budget id, event count, orders key, delta, accountant)
#: -> epsilon spent. A ledger is append-only and every charge bumps the row's ``event_count`` in
#: the statement that extends its curve, so equal keys are equal histories and the memo is exactly
#: what a recomputation would give (it saves reading and evaluating 1.3 KB curves of unchanged
#: ledgers on every overview and scrape). Cleared when it grows past ``_MEMO_MAX``.
_SPENT_MEMO: dict[tuple[uuid.UUID, int, str | None, float, str], float] = {}
_MEMO_MAX = 200_000
#: The budget columns without the curve: what an overview reads for every row.
#: The two UUID columns come raw (text on SQLite, ``uuid.UUID`` from psycopg) and are converted
#: through ``_UUIDS``: SQLAlchemy's per-value UUID conversion was the largest cost of an overview.
_LIGHT_COLUMNS = tuple(
    type_coerce(c, String).label(c.name) if c.name in ("id", "organization_id") else c
    for c in _BUDGET_COLUMNS
    if c.name != "rdp_curve"
)
_UUIDS: dict[Any, tuple[uuid.UUID, str]] = {}
#: The stored epsilon and its key (revision 0021), read after ``_LIGHT_COLUMNS``.
_STORED_COLUMNS = tuple(
    _BUDGETS.c[name] for name in ("epsilon_spent", "epsilon_delta", "epsilon_key", "epsilon_event_count")
)


def _uuid(raw: Any) -> tuple[uuid.UUID, str]:
    """(UUID, its text) of a raw id, remembered (organizations and budgets repeat every read)."""
    known = _UUIDS.get(raw)
    if known is None:
        value = raw if isinstance(raw, uuid.UUID) else uuid.UUID(raw)
        if len(_UUIDS) > _MEMO_MAX:
            _UUIDS.clear()
        known = _UUIDS[raw] = (value, str(value))
    return known


def _memo_key(
    budget: _Budget, delta: float, policy: LedgerPolicy
) -> tuple[uuid.UUID, int, str | None, float, str]:
    return (budget.id, budget.event_count, budget.rdp_orders_key, delta, policy.accountant)


_CURVE_AT = [c.name for c in _BUDGET_COLUMNS].index("rdp_curve")


_LIGHT_END = len(_LIGHT_COLUMNS)

#: (epsilon_spent, epsilon_delta, epsilon_key, epsilon_event_count) of a budget row.
Stored = tuple[float | None, float | None, str | None, int | None]


def _light(row: Any) -> _Budget:
    """A ``_LIGHT_COLUMNS`` row (or its first columns) as a ``_Budget`` without its curve."""
    return _Budget(_uuid(row[0])[0], _uuid(row[1])[0], *row[2:_CURVE_AT], None, *row[_CURVE_AT:_LIGHT_END])  # type: ignore[call-arg]


def stored_epsilon(budget: _Budget, stored: Stored, delta: float, policy: LedgerPolicy) -> float | None:
    """The row's stored epsilon if it is what the accountant would compute now, else None.

    It is the ``rdp`` accountant's value for the row's curve, so it counts only under ``rdp``, for
    the same conversion and grid (the key), the same history (the ledger is append-only and every
    charge bumps ``event_count`` in the statement that stores the epsilon) and the same delta."""
    spent, at_delta, key, event_count = stored
    if (
        spent is None
        or policy.accountant != "rdp"
        or key != STORED_EPSILON_KEY
        or event_count != budget.event_count
        or at_delta != delta
    ):
        return None
    return float(spent)


def _statuses_memo(
    reader: Reader, budgets: Sequence[_Budget], policy: LedgerPolicy, stored: Sequence[Stored] | None = None
) -> list[BudgetStatus]:
    """``_statuses`` of budgets read without their curves: the stored epsilon where its key matches
    (``stored_epsilon``; no numpy), memoized epsilons where the ledger has not changed, the curves
    of the others read in one query per 900 and evaluated in one pass."""
    caps = [_cap(budget, policy) for budget in budgets]
    keys = [_memo_key(budget, delta, policy) for budget, (_, delta) in zip(budgets, caps, strict=True)]
    found: list[float | None] = (
        [None] * len(budgets)
        if stored is None
        else [
            stored_epsilon(budget, values, delta, policy)
            for budget, (_, delta), values in zip(budgets, caps, stored, strict=True)
        ]
    )
    missing = [
        budget
        for budget, key, spent_eps in zip(budgets, keys, found, strict=True)
        if spent_eps is None and key not in _SPENT_MEMO
    ]
    if missing:
        curves: dict[uuid.UUID, bytes | None] = {}
        ids = [budget.id for budget in missing]
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            query = select(_BUDGETS.c.id, _BUDGETS.c.rdp_curve).where(
                _BUDGETS.c.id.in_(ids[start : start + 900])
            )
            curves.update((budget_id, curve) for budget_id, curve in reader.execute(query))
        full = [replace(budget, rdp_curve=curves.get(budget.id)) for budget in missing]
        if len(_SPENT_MEMO) + len(full) > _MEMO_MAX:
            _SPENT_MEMO.clear()
        for budget, status in zip(full, _statuses(reader, full, policy), strict=True):
            _SPENT_MEMO[_memo_key(budget, status.delta, policy)] = status.epsilon_spent
    return [
        _status_row(budget, cap, delta, _SPENT_MEMO[key] if spent_eps is None else spent_eps)
        for budget, (cap, delta), key, spent_eps in zip(budgets, caps, keys, found, strict=True)
    ]


def _budget_query(
    reader: Reader, organization_id: str | uuid.UUID | None, model_type: str | None, unit: str | None
) -> Any:
    query = select(*_LIGHT_COLUMNS, *_STORED_COLUMNS)
    if organization_id is not None:
        query = query.where(_BUDGETS.c.organization_id == require_organization(reader, organization_id))
    if model_type is not None:
        query = query.where(_BUDGETS.c.model_type == clean_model_type(model_type))
    if unit is not None:
        query = query.where(_BUDGETS.c.unit == check_unit(unit))
    return query


def budget_rows(
    reader: Reader,
    organization_id: str | uuid.UUID | None = None,
    *,
    policy: LedgerPolicy,
    model_type: str | None = None,
    unit: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[BudgetStatus]:
    """Every budget (or one organization's, one model type's, one unit's), one row per unit, with
    epsilon spent and remaining (+inf after a non-private release), sorted by organization id,
    model type and unit (``limit``/``offset``: one window of that order); [] on a fresh database.
    ``budget show``, the admin API and ``/metrics`` all read this."""
    query = _budget_query(reader, organization_id, model_type, unit).order_by(
        _BUDGETS.c.organization_id, _BUDGETS.c.model_type, _BUDGETS.c.unit
    )
    if limit is not None:
        query = query.limit(limit).offset(offset)
    rows = list(reader.execute(query))
    stored: list[Stored] = [tuple(row[_LIGHT_END:]) for row in rows]
    return _statuses_memo(reader, [_light(row) for row in rows], policy, stored)


def count_budgets(
    reader: Reader,
    organization_id: str | uuid.UUID | None = None,
    *,
    model_type: str | None = None,
    unit: str | None = None,
) -> int:
    """How many rows ``budget_rows`` would list with the same filters."""
    query = _budget_query(reader, organization_id, model_type, unit)
    return int(reader.scalar(select(func.count()).select_from(query.subquery())) or 0)
