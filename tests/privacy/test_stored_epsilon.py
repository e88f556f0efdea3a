"""The epsilon a budget row stores (revision 0021) on SQLite and PostgreSQL: it is the accountant's
recomputation of the committed history to the last bit, and it is used only under its own key."""

from __future__ import annotations

import hashlib
import struct
import uuid
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, select, update

from privacy import accountants, accounting, budget_status, ledger
from privacy.events import CentralDpEvent, DpEvent, DpSgdEvent, NonPrivateEvent, event_from_row
from privacy.ledger import LedgerPolicy
from schema.db import make_engine, reading, transaction
from schema.tables.privacy import privacy_budgets, privacy_ledger_events
from tests.privacy.conftest import make_org

MODEL = "digits"
STORED = ("epsilon_spent", "epsilon_delta", "epsilon_key", "epsilon_event_count")


def bits(value: float) -> bytes:
    """The float's IEEE-754 bytes: equal bits, not merely equal values (0.0 vs -0.0, inf)."""
    return struct.pack("<d", value)


def replayed(engine: Engine, row: Any, delta: float) -> float:
    """The ``rdp`` accountant's epsilon of every committed event of the row's ledger, replayed."""
    with engine.connect() as connection:
        events: list[DpEvent] = [
            event_from_row(e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, e.clip_norm, e.unit)
            for e in connection.execute(
                select(privacy_ledger_events)
                .where(
                    privacy_ledger_events.c.organization_id == row.organization_id,
                    privacy_ledger_events.c.model_type == row.model_type,
                    privacy_ledger_events.c.unit == row.unit,
                )
                .order_by(privacy_ledger_events.c.id)
            )
        ]
    return accounting.epsilon(events, delta, "rdp")


def rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(privacy_budgets).order_by(privacy_budgets.c.id)))


def shown(engine: Engine, policy: LedgerPolicy) -> list[budget_status.BudgetStatus]:
    """What ``budget show`` lists, from a cleared per-process memo (as a fresh command would)."""
    budget_status._SPENT_MEMO.clear()
    with reading(engine) as connection:
        return budget_status.budget_rows(connection, policy=policy)


def charge_some(engine: Engine, policy: LedgerPolicy) -> tuple[uuid.UUID, uuid.UUID]:
    first, second = make_org(engine), make_org(engine)
    with transaction(engine) as session:
        ledger.set_budget(session, second, MODEL, 3.0, 1e-6, policy=policy, unit="user")
        ledger.set_budget(session, second, "vision", 5.0, 1e-5, policy=policy)  # every unit
        for round_ in (1, 2, 3):
            ledger.charge(
                session, first, MODEL, DpSgdEvent(1.1, 0.01, 50), aggregation_round=round_, policy=policy
            )
        ledger.charge(session, first, MODEL, CentralDpEvent(2.0, 0.2, 5, 1.0), policy=policy)
        ledger.charge(session, second, MODEL, DpSgdEvent(1.2, 0.02, 150, "user"), policy=policy)
        ledger.charge(session, second, "vision", NonPrivateEvent("record"), policy=policy)
    with transaction(engine) as session:  # a later transaction extends a stored curve
        ledger.charge(session, first, MODEL, DpSgdEvent(0.9, 0.05, 20), policy=policy)
    return first, second


def test_the_written_out_orders_key_is_the_grids_hash() -> None:
    assert hashlib.sha256(accounting.ORDERS.tobytes()).hexdigest()[:16] == accountants.RDP_ORDERS_KEY
    assert accountants.RDP_ORDERS_KEY == accounting.ORDERS_KEY
    assert accountants.STORED_EPSILON_KEY.startswith("rdp/")
    assert accountants.STORED_EPSILON_KEY.endswith(accounting.ORDERS_KEY)
    assert len(accountants.STORED_EPSILON_KEY) <= privacy_budgets.c.epsilon_key.type.length  # type: ignore[attr-defined]


def test_every_charge_and_cap_change_stores_the_accountants_epsilon_to_the_last_bit(engine: Engine) -> None:
    # Prepare
    policy = LedgerPolicy()

    # Execute
    charge_some(engine, policy)

    # Assert: every row (charged, capped, blank) holds the replay's epsilon at its own delta, bit
    # for bit, and the batch evaluation of its stored curve (what a reader without the value does).
    budgets = rows(engine)
    assert len(budgets) == 6  # first: record, tenant; second: digits user, vision record, user, tenant
    for row in budgets:
        delta = row.delta if row.delta is not None else policy.default_delta
        assert row.epsilon_key == accountants.STORED_EPSILON_KEY
        assert row.epsilon_event_count == row.event_count
        assert bits(row.epsilon_delta) == bits(delta)
        assert bits(row.epsilon_spent) == bits(replayed(engine, row, delta)), row
        if row.rdp_curve is not None:
            curve = np.frombuffer(row.rdp_curve, dtype=np.float64)
            batch = accounting.epsilons_from_rdp(curve.reshape(1, -1), np.array([delta]))
            assert bits(row.epsilon_spent) == bits(float(batch[0]))
    assert any(row.epsilon_spent == float("inf") for row in budgets)  # the non-private release


def test_budget_rows_print_the_same_bits_from_the_stored_value_and_from_the_curve(engine: Engine) -> None:
    # Prepare
    policy = LedgerPolicy()
    charge_some(engine, policy)
    from_stored = shown(engine, policy)
    with engine.begin() as connection:
        connection.execute(update(privacy_budgets).values({name: None for name in STORED}))

    # Execute
    from_curves = shown(engine, policy)

    # Assert
    assert [s.as_dict() for s in from_stored] == [s.as_dict() for s in from_curves]
    assert [bits(s.epsilon_spent) for s in from_stored] == [bits(s.epsilon_spent) for s in from_curves]
    assert [bits(s.epsilon_remaining) for s in from_stored] == [
        bits(s.epsilon_remaining) for s in from_curves
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"epsilon_key": "rdp/balle2020.0/087d6ebd112b3877"},  # another conversion
        {"epsilon_key": "rdp/balle2020.1/0000000000000000"},  # another grid
        {"epsilon_event_count": 99},  # another history
        {"epsilon_delta": 1e-7},  # another delta
        {"epsilon_key": None},
    ],
)
def test_a_stored_epsilon_under_another_key_is_recomputed_not_shown(
    engine: Engine, change: dict[str, Any]
) -> None:
    # Prepare: a bogus stored value, so using it would show.
    policy = LedgerPolicy()
    charge_some(engine, policy)
    expected = shown(engine, policy)
    with engine.begin() as connection:
        connection.execute(update(privacy_budgets).values(epsilon_spent=123.0, **change))

    # Execute
    statuses = shown(engine, policy)

    # Assert
    assert [s.as_dict() for s in statuses] == [s.as_dict() for s in expected]
    assert all(s.epsilon_spent != 123.0 for s in statuses)


def test_a_matching_key_is_trusted(engine: Engine) -> None:
    """The reader does use the stored number (what makes ``budget show`` numpy-free): a row whose
    key matches is shown as stored, which is why only the ledger writes these columns."""
    policy = LedgerPolicy()
    charge_some(engine, policy)
    with engine.begin() as connection:
        connection.execute(update(privacy_budgets).values(epsilon_spent=1.25))

    assert {s.epsilon_spent for s in shown(engine, policy)} == {1.25}


def test_another_default_delta_or_the_prv_accountant_recomputes(engine: Engine) -> None:
    # Prepare: budgets without a delta of their own are read at the platform default.
    policy = LedgerPolicy()
    charge_some(engine, policy)
    other_delta = LedgerPolicy(default_delta=1e-7)
    with engine.begin() as connection:
        connection.execute(update(privacy_budgets).values(epsilon_spent=123.0))

    # Execute
    at_other_delta = shown(engine, other_delta)
    under_prv = shown(engine, LedgerPolicy(accountant="prv"))

    # Assert
    by_key = {(r.organization_id, r.model_type, r.unit): r for r in rows(engine)}
    for status in at_other_delta:
        row = by_key[(uuid.UUID(status.organization_id), status.model_type, status.unit)]
        if row.delta is None:
            assert bits(status.epsilon_spent) == bits(replayed(engine, row, 1e-7))
        else:
            assert status.epsilon_spent == 123.0  # its own delta: the stored value's key matches
    assert all(s.epsilon_spent != 123.0 for s in under_prv)


def test_a_prv_charge_clears_the_stored_value_and_a_cap_change_refreshes_it(engine: Engine) -> None:
    # Prepare
    policy = LedgerPolicy()
    org, _ = charge_some(engine, policy)

    # Execute: a prv charge extends the curve without an rdp epsilon; a new delta is stored anew.
    with transaction(engine) as session:
        ledger.charge(session, org, MODEL, DpSgdEvent(1.5, 0.01, 10), policy=LedgerPolicy(accountant="prv"))
    cleared = next(
        r for r in rows(engine) if r.organization_id == org and r.model_type == MODEL and r.unit == "record"
    )
    with transaction(engine) as session:
        ledger.set_budget(session, org, MODEL, 9.0, 1e-4, policy=policy, unit="record")
    refreshed = next(r for r in rows(engine) if r.id == cleared.id)

    # Assert
    assert [getattr(cleared, name) for name in STORED] == [None] * 4
    assert refreshed.epsilon_delta == 1e-4 and refreshed.epsilon_event_count == refreshed.event_count
    assert bits(refreshed.epsilon_spent) == bits(replayed(engine, refreshed, 1e-4))
    assert shown(engine, policy)  # and reads back


def test_revision_0021_adds_and_drops_the_four_columns(empty_engine: Engine) -> None:
    from schema import migrate

    migrate.upgrade(empty_engine, "0021")
    assert set(STORED) <= {c["name"] for c in sa.inspect(empty_engine).get_columns("privacy_budgets")}
    migrate.downgrade(empty_engine, "0020")
    assert not set(STORED) & {c["name"] for c in sa.inspect(empty_engine).get_columns("privacy_budgets")}
    migrate.upgrade(empty_engine)


def test_budget_show_reads_the_stored_value_without_numpy(database_url: str) -> None:
    """In a fresh interpreter, listing budgets whose keys match imports neither numpy nor the
    accountant; one stale row brings them in (and prints the same number)."""
    import os
    import subprocess
    import sys

    from schema import migrate

    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        charge_some(engine, LedgerPolicy())
        probe = (
            "import sys\nfrom orchestrator.cli.main import main\nmain(['budget', 'show', '--json'])\n"
            "print(sorted(m for m in ('numpy', 'privacy.accounting', 'scipy') if m in sys.modules), file=sys.stderr)"
        )
        env = {**os.environ, "ACCUTE_DATABASE_URL": database_url}

        def run() -> tuple[str, str]:
            done = subprocess.run(
                [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
            )
            return done.stdout, done.stderr.strip().splitlines()[-1]

        stored_out, stored_modules = run()
        with engine.begin() as connection:
            connection.execute(update(privacy_budgets).values(epsilon_key=None))
        curve_out, curve_modules = run()
    finally:
        engine.dispose()
    assert stored_modules == "[]"
    assert curve_modules == "['numpy', 'privacy.accounting']"
    assert stored_out == curve_out


#: ``epsilon_from_rdp`` of fixed curves under the conversion ``STORED_EPSILON_KEY`` names
#: ("balle2020.1"): (events, delta) -> epsilon, to 10 significant digits (libm and numpy's SIMD
#: differ in the last bits between CPUs, not in these).
CONVERSION_FINGERPRINT = (
    (((1.1, 0.01, 50), (0.9, 0.05, 20)), 1e-5, 3.176686673),
    (((1.1, 0.01, 50), (0.9, 0.05, 20)), 1e-6, 3.788586087),
    (((2.0, 0.2, 500),), 1e-5, 13.69232405),
)


@pytest.mark.parametrize(("events", "delta", "expected"), CONVERSION_FINGERPRINT)
def test_the_conversion_is_the_one_the_stored_key_names(
    events: tuple[tuple[float, float, int], ...], delta: float, expected: float
) -> None:
    curve = accounting.compose(DpSgdEvent(*event) for event in events)
    assert accounting.epsilon_from_rdp(curve, delta) == pytest.approx(expected, rel=1e-9), (
        "the RDP-to-epsilon conversion changed: bump the version in privacy.accountants.STORED_EPSILON_KEY "
        "(stored epsilons of the old conversion must be recomputed, not shown), then update this fingerprint"
    )
    assert "/balle2020.1/" in accountants.STORED_EPSILON_KEY
