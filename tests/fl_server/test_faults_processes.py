"""Faults in a real deployment: a SuperLink killed mid-round, two servers on one run, a database outage.

Real processes (flower-superlink, flower-supernode, flwr-serverapp, ``flwr run``) on loopback, as
in test_run_local.py; two tenants and short rounds to keep each test near a minute. After each
fault the run must complete with nothing counted twice and every release charged (invariants 3, 6):
``assert_counted_once`` is the shared check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from fl_server.config import DpMode
from fl_server.deploy import DeploymentError, LocalDeployment, run_local, run_overrides
from schema.config import Settings
from schema.db import make_engine, transaction
from schema.migrate import upgrade
from schema.models import (
    FederatedLearningContribution,
    FlPublishedModel,
    FlRoundOutcome,
    FlRun,
    PrivacyLedgerEvent,
    VamnModelRegistry,
)
from tests.fl_server.pg_cluster import PgCluster, pg_cluster
from tests.fl_server.test_run_local import TRAIN, assert_no_flower_processes_left

pytestmark = pytest.mark.slow

TENANTS = ("tenant-0", "tenant-1")
#: Generous: the CI machine may be shared; each ClientApp call is a new process importing torch.
RUN_TIMEOUT_S = 600


@pytest.fixture
def own_postgres() -> Iterator[PgCluster]:
    """A PostgreSQL cluster this test starts, stops at will, and always stops and deletes."""
    with pg_cluster() as cluster:
        yield cluster


def deployment(out: Path, database_url: str | None = None) -> LocalDeployment:
    url = database_url or f"sqlite:///{out / 'accute.db'}"
    settings = Settings(database_url=url, weights_dir=out / "weights")
    return LocalDeployment(out, "digits", 2, seed=2, settings=settings, run_timeout_s=RUN_TIMEOUT_S)


def serverapp_pids(dep: LocalDeployment) -> list[int]:
    pids = []
    for pid in dep.processes[0].tree():
        try:
            if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def _wait_for_round(
    dep: LocalDeployment,
    run_name: str,
    round_: int,
    reached: Callable[[list[str], int], bool],
    what: str,
    timeout_s: float,
) -> None:
    """Poll every 10 ms (a round's judging and commit take tens of ms) until ``reached(statuses of
    round_'s outcomes, the run's last completed round)``; ``reached`` raises when it was missed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with transaction(dep.engine) as session:
            run = session.scalar(select(FlRun).where(FlRun.name == run_name))
            if run is not None:
                statuses = session.scalars(
                    select(FlRoundOutcome.status).where(
                        FlRoundOutcome.run_id == run.id, FlRoundOutcome.aggregation_round == round_
                    )
                ).all()
                if reached(list(statuses), run.last_completed_round):
                    return
        time.sleep(0.01)
    raise AssertionError(f"no {what} in round {round_} of {run_name} within {timeout_s}s")


def wait_for_dispatch(dep: LocalDeployment, run_name: str, round_: int, timeout_s: float = 400) -> None:
    """Until ``round_`` was dispatched (its nodes train; no reply judged yet)."""

    def reached(statuses: list[str], _: int) -> bool:
        if statuses and set(statuses) != {"dispatched"}:
            raise AssertionError(f"round {round_} judged a reply before its dispatch was seen")
        return bool(statuses)

    _wait_for_round(dep, run_name, round_, reached, "dispatch", timeout_s)


@dataclass(frozen=True)
class Counted:
    attempt: int
    #: {(round, tenant, attempt): status}
    outcomes: dict[tuple[int, str, int], str]
    events: int


def wait_for_lease(dep: LocalDeployment, run_name: str, timeout_s: float = 400) -> str:
    """The owner of the run's lease, once a server took it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with transaction(dep.engine) as session:
            owner = session.scalar(select(FlRun.lease_owner).where(FlRun.name == run_name))
        if owner is not None:
            return owner
        time.sleep(0.2)
    raise AssertionError(f"no server took the lease of {run_name} within {timeout_s}s")


def assert_counted_once(dep: LocalDeployment, run_name: str, rounds: int) -> Counted:
    """The run completed and was published once; per round one attempt's contributions count, with
    weights summing to 1 and no tenant accepted twice; every dispatch has exactly one ledger event,
    and no event is without its dispatch. Returns facts for test-specific assertions."""
    with transaction(dep.engine) as session:
        run = session.scalar(select(FlRun).where(FlRun.name == run_name))
        assert run is not None
        assert (run.status, run.last_completed_round, run.lease_owner) == ("completed", rounds, None)
        outcomes = list(session.scalars(select(FlRoundOutcome).where(FlRoundOutcome.run_id == run.id)))
        contributions = {c.id: c for c in session.scalars(select(FederatedLearningContribution))}
        events = list(session.scalars(select(PrivacyLedgerEvent)))
        published = list(session.scalars(select(FlPublishedModel).where(FlPublishedModel.run_id == run.id)))
        registry = list(session.scalars(select(VamnModelRegistry)))

        accepted: dict[int, list[Decimal]] = defaultdict(list)
        per_tenant: Counter[tuple[int, uuid.UUID]] = Counter()
        for contribution in contributions.values():
            if contribution.status == "accepted":
                accepted[contribution.aggregation_round].append(contribution.contribution_weight)
                per_tenant[(contribution.aggregation_round, contribution.organization_id)] += 1
        assert max(per_tenant.values()) == 1, per_tenant
        assert sorted(accepted) == list(range(1, rounds + 1))
        for round_, weights in accepted.items():
            assert abs(sum(weights, Decimal(0)) - 1) < Decimal("0.00001"), (round_, weights)
        # Charge before release, once: one event per dispatched contribution, none without one.
        charged = Counter(e.contribution_id for e in events)
        assert None not in charged, "a ledger event without its contribution"
        assert set(charged) == set(contributions) and set(charged.values()) == {1}
        assert all(
            e.contribution_id is not None
            and e.aggregation_round == contributions[e.contribution_id].aggregation_round
            for e in events
        )
        # Outcomes: per (round, tenant, attempt) one row; at most one non-aborted row per (round, tenant).
        live = Counter((o.aggregation_round, o.tenant) for o in outcomes if o.status != "aborted")
        assert set(live.values()) == {1}
        assert len(published) == 1 and published[0].aggregation_round == rounds
        assert [r.weights_checksum for r in registry] == [run.weights_checksum]
        return Counted(
            run.attempt,
            {(o.aggregation_round, o.tenant, o.attempt): o.status for o in outcomes},
            len(events),
        )


def test_superlink_killed_mid_round_then_resumed_counts_every_reply_once(tmp_path: Path) -> None:
    # Prepare: a 2-round run; wait until round 2 is dispatched (its nodes train, their replies
    # come and are judged; an accepted one is written only by the round's commit).
    name = "superlink-kill"
    rounds = 2
    with deployment(tmp_path / "out") as dep:
        dep.start()
        overrides = run_overrides(name, "digits", rounds, DpMode.LOCAL, 2, 2, round_timeout_s=60, **TRAIN)
        dep.submit(overrides)
        wait_for_dispatch(dep, name, 2)
        serverapps = serverapp_pids(dep)

        # Execute: the SuperLink dies (SIGKILL, no cleanup); a new one on its port; resubmit.
        os.kill(dep.processes[0].process.pid, signal.SIGKILL)
        dep.processes[0].process.wait(timeout=10)
        killed_at = dep.db_run(name)
        dep.restart_superlink()
        resumed = dep.submit(overrides)
        status = dep.wait(resumed, name)

        # Assert
        assert status == "finished:completed"
        assert killed_at is not None and killed_at[1] == 1
        facts = assert_counted_once(dep, name, rounds)
        outcomes = facts.outcomes
        assert facts.attempt == 2
        # Round 2's first attempt is aborted (it never committed); attempt 2 ran it again.
        assert {outcomes[(2, t, 1)] for t in TENANTS} == {"aborted"}
        assert {outcomes[(2, t, 2)] for t in TENANTS} == {"accepted"}
        assert {outcomes[(1, t, 1)] for t in TENANTS} == {"accepted"}
        # 2 tenants x (round 1, round 2 twice): the aborted releases stay charged.
        assert facts.events == 6
        all_pids = [pid for p in dep.processes for pid in p.tree()] + serverapps
    assert_no_flower_processes_left(all_pids)


def test_a_second_server_on_a_running_run_is_refused_and_the_first_completes_unharmed(tmp_path: Path) -> None:
    # Prepare: the first server drives a 2-round run and holds its lease.
    name = "two-servers"
    out = tmp_path / "out"
    with deployment(out) as dep:
        dep.start()
        overrides = run_overrides(name, "digits", 2, DpMode.LOCAL, 2, 2, round_timeout_s=60, **TRAIN)
        first = dep.submit(overrides)
        owner = wait_for_lease(dep, name)

        # Execute: a second ServerApp on the same SuperLink; a second run-local (its own process)
        # resuming the run from the same folder, and one starting another run there.
        second = dep.submit(overrides)
        env = {k: v for k, v in os.environ.items() if k not in ("ACCUTE_DATABASE_URL", "ACCUTE_WEIGHTS_DIR")}
        command = [str(Path(".venv/bin/accute-fl").resolve()), "run-local", "--task", "digits"]
        command += ["--nodes", "2", "--rounds", "2", "--out", str(out)]
        resume = subprocess.run(
            [*command, "--run-name", name], capture_output=True, text=True, env=env, timeout=120
        )
        other = subprocess.run(
            [*command, "--run-name", "other"], capture_output=True, text=True, env=env, timeout=120
        )
        second_status = dep.wait(second, flower_poll_s=2)
        status = dep.wait(first, name)

        # Assert: the second ServerApp failed on the lease, naming the owner; both run-locals were
        # refused with one line and exit 4 before starting anything; the first run is unharmed.
        assert second_status == "finished:failed"
        second_log = dep.save_serverapp_log(second).read_text()
        assert "ConflictError" in second_log and owner in second_log
        assert resume.returncode == 4, resume.stderr
        assert resume.stderr.strip().splitlines()[-1] == resume.stderr.strip()
        assert owner in resume.stderr and "is driven by server" in resume.stderr
        assert other.returncode == 4, other.stderr
        assert f"in use by another run-local (pid {os.getpid()})" in other.stderr
        assert status == "finished:completed"
        facts = assert_counted_once(dep, name, 2)
        assert facts.attempt == 1 and facts.events == 4
        assert facts.outcomes == {(r, t, 1): "accepted" for r in (1, 2) for t in TENANTS}
        assert not (out / "other").exists()
        with transaction(dep.engine) as session:
            assert session.scalar(select(FlRun).where(FlRun.name == "other")) is None


def test_a_postgresql_outage_mid_round_is_ridden_out(tmp_path: Path, own_postgres: PgCluster) -> None:
    # Prepare: a cluster of the test's own (never the machine's), migrated; a 2-round run on it.
    pg = own_postgres
    engine = make_engine(pg.url)
    upgrade(engine)
    engine.dispose()
    name = "pg-outage"
    rounds = 2
    with deployment(tmp_path / "out", pg.url) as dep:
        dep.start()
        overrides = run_overrides(name, "digits", rounds, DpMode.LOCAL, 2, 2, round_timeout_s=60, **TRAIN)
        run_id = dep.submit(overrides)
        wait_for_dispatch(dep, name, 1)

        # Execute: PostgreSQL stops (every session ends) while round 1's nodes train — judging
        # their replies needs the database — and stays down until the server has met it (it logs
        # its retry; at most 25 s, inside its 30 s retry budget), then comes back.
        pg.stop()
        time.sleep(2)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and "retrying in" not in dep.save_serverapp_log(run_id).read_text(
            errors="replace"
        ):
            time.sleep(0.5)
        pg.start()
        status = dep.wait(run_id, name)

        # Assert: the same server finished the run (no new attempt), everything counted once.
        assert status == "finished:completed"
        facts = assert_counted_once(dep, name, rounds)
        assert facts.attempt == 1 and facts.events == 2 * rounds
        assert set(facts.outcomes.values()) == {"accepted"}
        assert "retrying in" in (dep.logs / f"serverapp-{run_id}.log").read_text()  # it met the outage


def test_a_failed_run_names_the_serverapps_error_and_leaves_a_partial_report(tmp_path: Path) -> None:
    # Prepare: a run that needs 3 nodes where 2 start; the ServerApp gives up after 5 s.
    out = tmp_path / "out"
    extra = {"min_nodes": 3, "round_timeout_s": 5, **TRAIN}

    # Execute
    with pytest.raises(DeploymentError) as failure:
        run_local(
            out,
            task="digits",
            nodes=2,
            rounds=2,
            seed=2,
            run_name="fails",
            timeout_s=RUN_TIMEOUT_S,
            extra=extra,
        )

    # Assert: one line with the ServerApp's own exception and where the partial report is; the
    # report says what happened (no round committed), and the lease was given up.
    message = str(failure.value)
    assert "\n" not in message
    assert "ended finished:failed (TimeoutError: only 2 of 3 nodes connected)" in message
    assert f"partial report {out / 'report.json'}" in message
    report = json.loads((out / "report.json").read_text())
    assert report["rounds"] == [] and report["final"]["model_version"] is None
    dep = deployment(out)
    try:
        with transaction(dep.engine) as session:
            run = session.scalar(select(FlRun).where(FlRun.name == "fails"))
            assert run is not None and (run.status, run.lease_owner) == ("running", None)
    finally:
        dep.engine.dispose()
