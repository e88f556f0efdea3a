"""Admission in O(sampled): a round gates the tenants it samples, not every registered one.

Local DP (and dp=off): a sampled tenant that fails the gate is replaced, so the round keeps its
size. Central DP: it is skipped, never replaced (each tenant's inclusion stays at most q, the
accountant's sampling rate), and the central population comes from set-based queries.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, select

from consent_gate.records import withdraw
from fl_server.governance import REJECTED_CONSENT, Governor, Tenant
from privacy import ledger
from schema.db import transaction
from schema.models import FlRoundOutcome, PrivacyLedgerEvent, User
from tests.fl_server.conftest import Federation

MakeFederation = Callable[..., Federation]


def withdraw_all(fed: Federation, index: int) -> None:
    with transaction(fed.engine) as session:
        org = uuid.UUID(fed.tenants[index].organization_id)
        for user in session.scalars(select(User).where(User.organization_id == org)):
            withdraw(session, org, user.id, "federated_learning")


def tenants_of(fed: Federation) -> list[Tenant]:
    return [Tenant(fed.node_of(i), uuid.UUID(t.organization_id), t.name) for i, t in enumerate(fed.tenants)]


def outcome_rows(fed: Federation) -> list[FlRoundOutcome]:
    with transaction(fed.engine) as session:
        rows = list(session.scalars(select(FlRoundOutcome)))
        session.expunge_all()
    return rows


def trained(fed: Federation, server_round: int) -> list[int]:
    return [
        m.metadata.dst_node_id
        for m in fed.grid.sent
        if m.metadata.message_type.startswith("train")
        and m.content["instruction"]["server_round"] == server_round
    ]


@contextmanager
def counting(engine: Engine) -> Iterator[dict[str, int]]:
    """Statements run on ``engine`` meanwhile that read consents or budgets/ledgers."""
    counts = {"consent": 0, "budget": 0, "all": 0}

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts["all"] += 1
        counts["consent"] += "user_consents" in statement
        counts["budget"] += "privacy_budgets" in statement or "privacy_ledger_events" in statement

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield counts
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_admission_queries_are_bounded_by_the_sampled_count_not_the_bound_tenants(
    make_federation: MakeFederation,
) -> None:
    # Prepare: 200 bound tenants, fraction 0.05: 10 sampled per round. An explicit update-norm
    # bound: the default (5x the median accepted norm) can flag a small tenant's noise-dominated
    # DP update in round 1, and its auto-block would make round 2 gate a replacement (11, not 10).
    fed = make_federation(tenants=200)
    config = fed.config(rounds=2, fraction=0.05, steps=2, max_update_norm=1000.0)
    strategy = fed.strategy(config)
    per_round: list[dict[str, int]] = []
    admit = strategy.governor.admit

    def counted_admit(*args: Any, **kwargs: Any) -> Any:
        with counting(fed.engine) as counts:
            admission = admit(*args, **kwargs)
        per_round.append(counts | {"gated": len(admission.admitted) + len(admission.skipped)})
        return admission

    strategy.governor.admit = counted_admit  # type: ignore[method-assign]
    from aggregation.flwr_adapter import record_from_arrays
    from fl_client.tasks import get_task

    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(3).items()}

    # Execute
    strategy.start(fed.grid, record_from_arrays(initial))

    # Assert: 10 gated per round; one grouped consent query for them; at most 2 budget reads each
    # (the budget row, and the ledger's events when no curve is stored) -- never one per bound tenant.
    assert [c["gated"] for c in per_round] == [10, 10]
    for counts in per_round:
        assert counts["consent"] == 1
        assert counts["budget"] <= 2 * 10
        assert counts["all"] <= 4 * 10 + 5
    assert [len(trained(fed, r)) for r in (1, 2)] == [10, 10]
    assert len(outcome_rows(fed)) == 20  # rows for the sampled only


def test_a_sampled_tenant_failing_the_gate_is_replaced_under_local_dp(
    make_federation: MakeFederation,
) -> None:
    # Prepare: 7 of 10 tenants hold no consent; 3 are sampled per round (Flower's sample, seeded here).
    fed = make_federation(tenants=10)
    for index in range(3, 10):
        withdraw_all(fed, index)
    random.seed(11)

    # Execute
    fed.run(fed.config(rounds=2, fraction=0.3, steps=2))

    # Assert: each round trains exactly the 3 consenting tenants (failed ones were replaced); every
    # tenant the round drew and skipped has its outcome row with the reason; none of them trained.
    consenting = {fed.node_of(i) for i in range(3)}
    for server_round in (1, 2):
        assert sorted(trained(fed, server_round)) == sorted(consenting)
    rows = outcome_rows(fed)
    skipped = [r for r in rows if r.status == REJECTED_CONSENT]
    assert skipped, "the seeded sample drew a tenant without consent"
    assert all("holding every consent" in (r.reason or "") and not r.sampled for r in skipped)
    assert {r.tenant for r in skipped} <= {f"tenant-{i}" for i in range(3, 10)}
    assert {(r.aggregation_round, r.tenant) for r in rows if r.status == "accepted"} == {
        (n, f"tenant-{i}") for n in (1, 2) for i in range(3)
    }


def test_local_admission_replaces_from_the_reserve_until_the_round_is_full(
    make_federation: MakeFederation,
) -> None:
    # Prepare: tenants 0 and 1 fail the consent gate; 2, 3 and 4 pass.
    fed = make_federation(tenants=5)
    for index in (0, 1):
        withdraw_all(fed, index)
    t = tenants_of(fed)
    governor = Governor(fed.engine, fed.config(rounds=1), fed.settings)
    governor.start_run()

    # Execute: sampled [0, 2]; the reserve would draw 1, then 3, then 4.
    queue = [t[1], t[3], t[4]]

    def reserve(count: int) -> list[Tenant]:
        drawn = queue[:count]
        del queue[:count]
        return drawn

    admission = governor.admit(1, [t[0], t[2]], reserve=reserve)

    # Assert: 0 replaced by 1 (fails too), then by 3; tenant 4 is never looked at.
    assert set(admission.admitted) == {t[2].node_id, t[3].node_id}
    assert admission.skipped == {"tenant-0": REJECTED_CONSENT, "tenant-1": REJECTED_CONSENT}
    assert admission.replacements == [t[1], t[3]]
    rows = {r.tenant: r for r in outcome_rows(fed)}
    assert set(rows) == {"tenant-0", "tenant-1"}
    assert all(r.reason and "holding every consent" in r.reason for r in rows.values())


def test_central_admission_skips_without_replacing_and_charges_the_eligible_population(
    make_federation: MakeFederation,
) -> None:
    # Prepare: tenant 0 has no consent; tenant 1's budget delta is below the run's; 2-4 are eligible.
    fed = make_federation(tenants=5)
    withdraw_all(fed, 0)
    policy = ledger.LedgerPolicy.from_settings(fed.settings)
    with transaction(fed.engine) as session:
        ledger.set_budget(
            session, fed.tenants[1].organization_id, "digits", 8.0, 1e-7, unit="tenant", policy=policy
        )
    t = tenants_of(fed)
    config = fed.config(rounds=1, dp="central", fraction=0.4, delta=1e-6, central_noise_multiplier=5.0)
    governor = Governor(fed.engine, config, fed.settings)
    governor.start_run()

    # Execute: the Poisson sample drew 0, 1 and 2.
    admission = governor.admit(1, [t[0], t[1], t[2]], population=t)

    # Assert: 0 and 1 are skipped with their reasons and not replaced; the population is who is
    # eligible now (2, 3, 4), and dispatch charges exactly them.
    assert set(admission.admitted) == {t[2].node_id}
    assert admission.skipped == {"tenant-0": REJECTED_CONSENT, "tenant-1": "rejected_budget"}
    assert admission.replacements == []
    assert {x.name for x in admission.population} == {"tenant-2", "tenant-3", "tenant-4"}
    reasons = {r.tenant: r.reason or "" for r in outcome_rows(fed)}
    assert "holding every consent" in reasons["tenant-0"] and "delta" in reasons["tenant-1"]
    batch = governor.dispatch(1, list(admission.admitted.values()), admission.population)
    assert {x.name for x in batch.central_charged} == {"tenant-2", "tenant-3", "tenant-4"}
    with transaction(fed.engine) as session:
        charged = set(session.scalars(select(PrivacyLedgerEvent.organization_id)))
    assert charged == {x.organization_id for x in t[2:]}


def test_central_dp_run_never_trains_more_than_its_poisson_sample(make_federation: MakeFederation) -> None:
    # Prepare: 6 of 8 tenants hold no consent; fraction 0.5 under central DP; a seeded sampler stands
    # in for the CSPRNG so the draws can be replayed.
    fed = make_federation(tenants=8)
    for index in range(2, 8):
        withdraw_all(fed, index)
    config = fed.config(rounds=3, dp="central", fraction=0.5, central_noise_multiplier=5.0, steps=2)
    strategy = fed.strategy(config)
    strategy._sampler = random.Random(5)  # type: ignore[assignment]
    replay = random.Random(5)
    from aggregation.flwr_adapter import record_from_arrays
    from fl_client.tasks import get_task

    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(3).items()}

    # Execute
    strategy.start(fed.grid, record_from_arrays(initial))

    # Assert: per round, exactly the sampled consenting tenants trained (no replacement for the
    # sampled ones that failed), and every sampled one that failed has its row.
    nodes = sorted(fed.node_of(i) for i in range(8))
    rows = outcome_rows(fed)
    for server_round in (1, 2, 3):
        sampled = {n for n in nodes if replay.random() < 0.5}
        assert set(trained(fed, server_round)) == sampled & {fed.node_of(0), fed.node_of(1)}
        skipped = {
            r.tenant for r in rows if r.aggregation_round == server_round and r.status == REJECTED_CONSENT
        }
        assert skipped == {f"tenant-{n - fed.node_of(0)}" for n in sampled if n - fed.node_of(0) >= 2}
