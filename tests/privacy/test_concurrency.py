"""Concurrent writers racing to spend the last bit of a budget: never both (invariant 3).

Run on both backends: PostgreSQL locks the budget row, SQLite serializes writers from the first
statement of the charge (a write).
"""

from __future__ import annotations

import threading
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from privacy import accounting, ledger
from privacy.events import DpSgdEvent
from privacy.ledger import LedgerPolicy
from schema.db import transaction
from schema.errors import BudgetExceededError
from tests.privacy.conftest import make_org

EVENT = DpSgdEvent(2.0, 0.01, 500)


def race(
    engine: Engine, org: uuid.UUID, model_type: str, events: list[DpSgdEvent], policy: LedgerPolicy
) -> list[str]:
    """Charge every event from its own thread, all released at once; each thread's outcome."""
    barrier = threading.Barrier(len(events))
    outcomes = ["" for _ in events]

    def worker(index: int) -> None:
        barrier.wait()
        try:
            with transaction(engine) as session:
                ledger.charge(session, org, model_type, events[index], policy=policy)
            outcomes[index] = "charged"
        except BudgetExceededError:
            outcomes[index] = "refused"
        except Exception as exc:  # recorded, so the assertion shows it
            outcomes[index] = f"error: {type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(events))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def cap_for(events_that_fit: int) -> float:
    """A cap that EVENT fits under exactly ``events_that_fit`` times."""
    fits = accounting.mechanism_epsilon(
        EVENT.noise_multiplier, EVENT.sample_rate, EVENT.steps * events_that_fit, 1e-5
    )
    over = accounting.mechanism_epsilon(
        EVENT.noise_multiplier, EVENT.sample_rate, EVENT.steps * (events_that_fit + 1), 1e-5
    )
    return (fits + over) / 2


def test_eight_writers_racing_for_five_slots_commit_exactly_five(engine: Engine) -> None:
    # Prepare: the budget row does not exist yet (default cap), so creation races too.
    org = make_org(engine)
    policy = LedgerPolicy(default_epsilon_cap=cap_for(5))

    # Execute
    outcomes = race(engine, org, "m", [EVENT] * 8, policy)

    # Assert
    assert sorted(outcomes) == ["charged"] * 5 + ["refused"] * 3
    with transaction(engine) as session:
        rows = ledger.budget_rows(session, org, policy=policy)
        assert len(ledger.history(session, org, "m", policy=policy)) == 5
    assert [r.events for r in rows] == [5]
    assert rows[0].epsilon_spent <= policy.default_epsilon_cap


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cap=st.floats(min_value=0.3, max_value=4.0),
    requests=st.lists(
        st.tuples(st.floats(min_value=0.6, max_value=6.0), st.floats(min_value=1e-3, max_value=0.5)),
        min_size=2,
        max_size=8,
    ),
)
def test_concurrent_requests_never_commit_more_than_the_cap(
    pg_engine: Engine, cap: float, requests: list[tuple[float, float]]
) -> None:
    # Prepare: an explicit cap on a fresh tenant.
    policy = LedgerPolicy()
    org = make_org(pg_engine)
    with transaction(pg_engine) as session:
        ledger.set_budget(session, org, "m", cap, 1e-5, policy=policy)
    events = [DpSgdEvent(z, q, 200) for z, q in requests]

    # Execute
    outcomes = race(pg_engine, org, "m", events, policy)

    # Assert: no errors; the committed events are the charged ones, and within the cap.
    assert set(outcomes) <= {"charged", "refused"}, outcomes
    with transaction(pg_engine) as session:
        committed = ledger.history(session, org, "m", policy=policy)
        spent = ledger.spent(session, org, "m", policy=policy)
    assert len(committed) == outcomes.count("charged")
    assert spent == accounting.epsilon(
        [DpSgdEvent(h.noise_multiplier, h.sample_rate, h.steps) for h in committed], 1e-5
    )
    assert spent <= cap
