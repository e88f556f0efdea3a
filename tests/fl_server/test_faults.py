"""Faults a deployment meets: lost nodes, interrupted rounds, two servers, a crash before publishing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from aggregation import SeenChecksums
from fl_server.governance import Governor
from fl_server.publish import PublishGate, publisher
from fl_server.strategy import RoundRecord
from schema.db import transaction
from schema.errors import ConflictError
from schema.models import FederatedLearningContribution, FlPublishedModel, FlRoundOutcome, FlRun
from tests.fl_server.conftest import Federation


def _rows(fed: Federation) -> list[FlRoundOutcome]:
    with transaction(fed.engine) as session:
        rows = list(session.scalars(select(FlRoundOutcome)))
        session.expunge_all()
        return rows


def test_a_node_lost_after_round_1_fails_offline_and_the_run_completes(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: three nodes required to start; tenant-1's node leaves after round 1 of 4.
    fed = make_federation()
    config = fed.config(rounds=4, min_nodes=3, round_timeout_s=1.0)

    def leave(record: RoundRecord) -> None:
        if record.server_round == 1:
            fed.grid.offline.add(fed.node_of(1))

    # Execute
    result = fed.run(config, on_round=leave)

    # Assert: rounds 2-4 go on with the two others; the lost tenant is failed, reason offline.
    assert result.last_round == 4
    statuses = {(r.aggregation_round, r.tenant): (r.status, r.reason) for r in _rows(fed)}
    assert statuses[(1, "tenant-1")] == ("accepted", None)
    for server_round in (2, 3, 4):
        assert statuses[(server_round, "tenant-1")] == ("failed", "offline")
        assert (
            statuses[(server_round, "tenant-0")][0] == statuses[(server_round, "tenant-2")][0] == "accepted"
        )
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None and run.status == "completed" and run.last_completed_round == 4


def test_min_nodes_still_gates_the_first_round(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    fed.grid.offline.add(fed.node_of(2))
    with pytest.raises(TimeoutError, match="only 2 of 3 nodes"):
        fed.run(fed.config(rounds=1, min_nodes=3, round_timeout_s=0.3))


def test_a_second_server_on_a_running_run_is_refused_naming_the_owner(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: server A holds the run.
    fed = make_federation()
    config = fed.config(rounds=2)
    first = Governor(fed.engine, config, fed.settings)
    first.start_run()

    # Execute / Assert: B is refused, and A's lease and attempt are untouched.
    second = Governor(fed.engine, config, fed.settings)
    with pytest.raises(ConflictError, match=first.owner):
        second.start_run()
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None and run.lease_owner == first.owner and run.attempt == 1


def test_a_replaced_server_can_neither_judge_nor_commit(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: A's lease lapsed and B took the run over.
    fed = make_federation()
    config = fed.config(rounds=2)
    first = Governor(fed.engine, config, fed.settings)
    first.start_run()
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None
        run.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    second = Governor(fed.engine, config, fed.settings)
    state = second.start_run()
    assert state.attempt == 2

    # Execute / Assert: A's commit is refused; B cannot commit round 2 before round 1.
    with pytest.raises(ConflictError, match="taken over"):
        first.commit_round(1, weights_checksum="a" * 64, weights={}, seen=SeenChecksums([]), metric=None)
    with pytest.raises(ConflictError, match="out of order"):
        second.commit_round(2, weights_checksum="b" * 64, weights={}, seen=SeenChecksums([]), metric=None)
    second.commit_round(1, weights_checksum="c" * 64, weights={}, seen=SeenChecksums([]), metric=None)
    with pytest.raises(ConflictError, match="twice"):
        second.commit_round(1, weights_checksum="d" * 64, weights={}, seen=SeenChecksums([]), metric=None)
    # The same commit again (a retry after a lost acknowledgement) changes nothing.
    second.commit_round(1, weights_checksum="c" * 64, weights={}, seen=SeenChecksums([]), metric=None)
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None and run.last_completed_round == 1 and run.weights_checksum == "c" * 64


def test_a_crash_while_publishing_leaves_the_run_to_be_completed_and_published_on_restart(
    make_federation,
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the publication fails inside the completing transaction (a crash between the two).
    fed = make_federation()
    config = fed.config(rounds=1)

    def crash(session, run):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt("killed while publishing")

    with pytest.raises(KeyboardInterrupt):
        fed.run(config, publish=crash)
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None and run.status == "running" and run.last_completed_round == 1

    # Execute: the restarted server has no round left to train; it completes and publishes.
    strategy = fed.strategy(config, publish=publisher(config, PublishGate()))
    from aggregation.flwr_adapter import record_from_arrays
    from fl_client.tasks import get_task

    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(config.seed).items()}
    result = strategy.start(fed.grid, record_from_arrays(initial))

    # Assert: completed, published once, and a third start is refused.
    assert result.rounds == [] and strategy.publication is not None
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None and run.status == "completed"
        assert session.scalar(select(func.count()).select_from(FlPublishedModel)) == 1
    with pytest.raises(ConflictError, match="already completed"):
        fed.run(config, publish=publisher(config, PublishGate()))


def test_a_completed_but_unpublished_run_is_published_on_the_next_start(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a run completed by a server that did not publish (older versions published afterwards).
    fed = make_federation()
    config = fed.config(rounds=1)
    fed.run(config)
    with transaction(fed.engine) as session:
        assert session.scalar(select(func.count()).select_from(FlPublishedModel)) == 0

    # Execute
    fed.run(config, publish=publisher(config, PublishGate()))

    # Assert
    with transaction(fed.engine) as session:
        published = list(session.scalars(select(FlPublishedModel)))
        assert len(published) == 1 and published[0].aggregation_round == 1
        accepted = session.scalar(
            select(func.count())
            .select_from(FederatedLearningContribution)
            .where(FederatedLearningContribution.status == "accepted")
        )
        assert accepted == 3  # nothing trained again


def test_a_commit_waits_out_a_locked_database_and_lands_once(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a real SQLite file; another process-like connection holds it exclusively for longer
    # than the busy timeout (10 s), so the first try fails with "database is locked".
    import sqlite3
    import threading
    import time

    from fl_server.config import RunConfig
    from schema import migrate
    from schema.config import Settings
    from schema.db import make_engine

    path = tmp_path / "fl.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    governor = Governor(engine, RunConfig(run_name="locked", task="digits", round_timeout_s=1.0), Settings())
    governor.start_run()
    locker = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(11.0, lambda: locker.execute("COMMIT"))
    release.start()

    # Execute
    started = time.monotonic()
    try:
        governor.commit_round(1, weights_checksum="e" * 64, weights={}, seen=SeenChecksums([]), metric=None)
    finally:
        release.join()
        locker.close()

    # Assert: it failed once, was retried, and landed exactly once.
    assert time.monotonic() - started > 10.0
    assert any("retrying" in r.getMessage() for r in caplog.records)
    with transaction(engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None and run.last_completed_round == 1 and run.weights_checksum == "e" * 64
    engine.dispose()


def test_a_diverged_models_metric_is_stored_as_null(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a server-side evaluation that reports +inf (a diverged model's loss).
    fed = make_federation()
    rounds: list[RoundRecord] = []

    # Execute
    fed.run(fed.config(rounds=1), server_evaluate=lambda arrays: float("inf"), on_round=rounds.append)

    # Assert
    from schema.models import FlRoundSummary

    with transaction(fed.engine) as session:
        summary = session.scalar(select(FlRoundSummary))
        assert summary is not None and summary.metric_value is None
    assert rounds[0].metric is None


def test_a_resumed_run_marks_a_tenant_whose_node_never_speaks_again_offline(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the server dies after round 1; tenant-1's node is gone when the run resumes.
    fed = make_federation()
    config = fed.config(rounds=3, min_nodes=2, round_timeout_s=1.0)

    def die(record: RoundRecord) -> None:
        if record.server_round == 1:
            raise RuntimeError("server killed")

    with pytest.raises(RuntimeError, match="server killed"):
        fed.run(config, on_round=die)
    fed.grid.offline.add(fed.node_of(1))

    # Execute: a new server resumes the run (a new attempt, nodes identified afresh).
    result = fed.run(config)

    # Assert: tenant-1 (bound by the first attempt, silent now) has an outcome every resumed round.
    assert result.last_round == 3
    statuses = {(r.aggregation_round, r.tenant): (r.status, r.reason) for r in _rows(fed)}
    for server_round in (2, 3):
        assert statuses[(server_round, "tenant-1")] == ("failed", "offline")
        assert statuses[(server_round, "tenant-0")][0] == "accepted"
