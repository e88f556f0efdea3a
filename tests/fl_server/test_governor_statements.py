"""The governor's statements per round stay few: an organization is loaded once per transaction,
budgets are projected in one query, and rows the governor wrote are updated by id, not loaded.

Pinned here so the per-tenant lookups (about five per tenant per round before) cannot come back
unnoticed: each count below was one per tenant (or per reply) before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from aggregation.flwr_adapter import record_from_arrays
from fl_client.tasks import get_task
from fl_server.governance import ACCEPTED
from tests.fl_server.conftest import Federation

MakeFederation = Callable[..., Federation]
TENANTS = 4
METHODS = ("admit", "dispatch", "judge", "commit_round")

ORGANIZATION_LOAD = re.compile(r"^\s*SELECT organizations\.")
BUDGET_READ = re.compile(r"^\s*SELECT privacy_budgets\.")
LOADED = re.compile(r"^\s*SELECT (federated_learning_contributions|fl_round_outcomes)\.id\b")
WHOLE_RUN = re.compile(r"^\s*SELECT fl_runs\.id\b.*fl_runs\.seen_checksums", re.DOTALL)
CONTRIBUTIONS_UPDATE = re.compile(r"^\s*UPDATE federated_learning_contributions SET")
AUDIT_LOCK = "pg_advisory_xact_lock"


def governed_round_statements(fed: Federation) -> dict[str, list[list[str]]]:
    """Statements of each governor call in round 2 (round 1 binds the nodes), call by call."""
    strategy = fed.strategy(fed.config(rounds=2, steps=2, max_update_norm=1000.0))
    calls: dict[str, list[list[str]]] = {name: [] for name in METHODS}
    current: list[list[str]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if current:
            current[-1].append(statement)

    def wrap(name: str) -> None:
        original = getattr(strategy.governor, name)

        def counted(server_round: int, *args: Any, **kwargs: Any) -> Any:
            current.append([])
            try:
                return original(server_round, *args, **kwargs)
            finally:
                statements = current.pop()
                if server_round == 2:
                    calls[name].append(statements)

        setattr(strategy.governor, name, counted)

    for name in METHODS:
        wrap(name)
    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(3).items()}
    event.listen(fed.engine, "before_cursor_execute", record)
    try:
        result = strategy.start(fed.grid, record_from_arrays(initial))
    finally:
        event.remove(fed.engine, "before_cursor_execute", record)
    assert result.rounds[-1].statuses == {t.name: ACCEPTED for t in fed.tenants}
    return calls


def matching(statements: list[str], pattern: re.Pattern[str]) -> int:
    return sum(1 for s in statements if pattern.search(s))


def test_a_round_loads_each_organization_once_per_transaction_not_per_validation(
    make_federation: MakeFederation,
) -> None:
    # Prepare
    fed = make_federation(tenants=TENANTS)

    # Execute
    calls = governed_round_statements(fed)

    # Assert: admission: the consent gate's existence check and one load for the batch;
    # dispatch: one load for every tenant (the ledger, snapshot and audit find them in memory);
    # judge: one per reply (its consent re-check); the commit none (it writes by id).
    [admit], [dispatch], [commit] = calls["admit"], calls["dispatch"], calls["commit_round"]
    assert matching(admit, ORGANIZATION_LOAD) == 2
    assert matching(dispatch, ORGANIZATION_LOAD) == 1
    assert len(calls["judge"]) == TENANTS
    assert [matching(reply, ORGANIZATION_LOAD) for reply in calls["judge"]] == [1] * TENANTS
    assert matching(commit, ORGANIZATION_LOAD) == 0


def test_admission_projects_every_sampled_budget_in_one_query(make_federation: MakeFederation) -> None:
    # Prepare
    fed = make_federation(tenants=TENANTS)

    # Execute
    [admit] = governed_round_statements(fed)["admit"]

    # Assert: one budget read for the round's unit, whatever the number of tenants.
    assert matching(admit, BUDGET_READ) == 1


def test_judgements_and_the_commit_update_rows_by_id_without_loading_them(
    make_federation: MakeFederation,
) -> None:
    # Prepare
    fed = make_federation(tenants=TENANTS)

    # Execute
    calls = governed_round_statements(fed)

    # Assert: no contribution or outcome loaded to be updated, the lease checked without loading
    # the run's whole row, and the round's acceptances (status, checksum, share) written by one
    # (executemany) statement from what the judgements kept in memory.
    for reply in calls["judge"]:
        assert matching(reply, LOADED) == 0
        assert matching(reply, WHOLE_RUN) == 0
    [dispatch], [commit] = calls["dispatch"], calls["commit_round"]
    assert matching(dispatch, WHOLE_RUN) == 0
    assert matching(commit, LOADED) == 0
    assert matching(commit, CONTRIBUTIONS_UPDATE) == 1


def test_statements_per_round_are_pinned(make_federation: MakeFederation) -> None:
    # Prepare
    fed = make_federation(tenants=TENANTS)

    # Execute
    calls = governed_round_statements(fed)

    # Assert: totals (PostgreSQL adds one advisory lock per audit chain and transaction, which
    # SQLite does not need). Issue 16's first pass: admit 13, dispatch 49, judge 14 a reply, commit
    # 15; then judge 11 a reply, commit 8. Since accepted replies are written with the round's
    # commit: an accepted reply reads 2 (its organization, the consent re-check) and the commit
    # writes them all (two updates, the snapshot uses, the audit chains, a hub event each); a
    # dispatch charges every tenant with one ``ledger.charge_many`` (46 statements for 4 before).
    def total(statements: list[str]) -> int:
        return len(statements) - sum(1 for s in statements if AUDIT_LOCK in s)

    [admit], [dispatch], [commit] = calls["admit"], calls["dispatch"], calls["commit_round"]
    assert total(admit) <= 7
    # Dispatch: per tenant its consent snapshot (2) and budget row lock (1), and on SQLite its
    # event insert (PostgreSQL inserts them all in one); the rest once for the round.
    assert total(dispatch) <= 9 + 4 * TENANTS
    assert [total(reply) for reply in calls["judge"]] == [2] * TENANTS
    assert total(commit) <= 12 + TENANTS
