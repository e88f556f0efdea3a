"""run-local with real processes: a flower-superlink and flower-supernodes on loopback, `flwr run`.

Slow (each ClientApp call is a fresh ``flwr-clientapp`` process importing torch), so two tenants.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from fl_client import protocol
from fl_server.config import DpMode
from fl_server.credentials import make_node_key
from fl_server.deploy import CONNECTION, LocalDeployment, process_tree, run_overrides
from orchestrator.cli.main import main
from schema.config import Settings
from schema.db import transaction
from schema.models import (
    FederatedLearningContribution,
    FlRoundOutcome,
    FlRun,
    PrivacyLedgerEvent,
    VamnModelRegistry,
)

pytestmark = pytest.mark.slow

TRAIN = {"steps": 5, "sample_rate": 0.1, "noise_multiplier": 1.1}


def deployment(out: Path, nodes: int = 2, secure: bool = False) -> LocalDeployment:
    settings = Settings(database_url=f"sqlite:///{out / 'accute.db'}", weights_dir=out / "weights")
    return LocalDeployment(out, "digits", nodes, seed=2, settings=settings, run_timeout_s=240, secure=secure)


def wait_for_round(dep: LocalDeployment, run_name: str, round_: int, timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = dep.db_run(run_name)
        if state is not None and state[1] >= round_:
            return
        time.sleep(0.5)
    raise AssertionError(f"round {round_} of {run_name} not committed within {timeout_s}s")


def outcomes(dep: LocalDeployment) -> dict[tuple[int, str], str]:
    with transaction(dep.engine) as session:
        return {(o.aggregation_round, o.tenant): o.status for o in session.scalars(select(FlRoundOutcome))}


def governance_lines(log_text: str) -> list[str]:
    """The ServerApp's governance lines in a `flwr log` text (ANSI colours and level dropped)."""
    messages = [
        re.sub(r"\x1b\[[0-9;]*m", "", line).split(":", 1)[-1].strip() for line in log_text.splitlines()
    ]
    return [m for m in messages if m.startswith(("accute run ", "round "))]


def assert_no_flower_processes_left(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        stat = Path(f"/proc/{pid}/stat").read_text()
        assert stat.rsplit(")", 1)[1].split()[0] == "Z", f"process {pid} still running"


def test_run_local_command_completes_three_rounds_and_publishes(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    monkeypatch.delenv("ACCUTE_DATABASE_URL", raising=False)
    monkeypatch.delenv("ACCUTE_WEIGHTS_DIR", raising=False)
    out = tmp_path / "out"

    # Execute
    code = main(
        ["run-local", "--task", "digits", "--nodes", "2", "--rounds", "3", "--seed", "1", "--out", str(out)]
    )

    # Assert: report written, one contribution per tenant per round, a published model version.
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"report: {out / 'report.json'}" in printed.out
    report = json.loads((out / "report.json").read_text())
    # A start line at once, then one line per round with this run's and the lifetime epsilon.
    assert printed.out.startswith("run-local local-digits-2n-3r-s1: starting a SuperLink and 2 SuperNode(s)")
    round_lines = [line for line in printed.out.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in round_lines] == ["round 1/3", "round 2/3", "round 3/3"]
    last_epsilon = max(report["rounds"][-1]["epsilon_run"].values())
    assert round_lines[-1].endswith(f"ε run {last_epsilon:.2f} life {last_epsilon:.2f}")
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert all(r["statuses"] == {"accepted": 2} for r in report["rounds"])
    assert sorted(report["tenants"]) == ["tenant-0", "tenant-1"]
    assert report["final"]["model_version"] and report["final"]["weights_checksum"]
    assert Path(report["final"]["weights_path"]).exists()
    dep = deployment(out)
    with transaction(dep.engine) as session:
        assert session.scalar(select(func.count()).select_from(FederatedLearningContribution)) == 6
        versions = list(session.scalars(select(VamnModelRegistry)))
        assert [v.weights_checksum for v in versions] == [report["final"]["weights_checksum"]]
    dep.engine.dispose()
    # Every Flower process is gone and each one logged to the output folder.
    logs = {p.name for p in (out / "logs").iterdir()}
    assert {"superlink.log", "tenant-0.log", "tenant-1.log"} < logs
    serverapp_log = next(out / "logs" / n for n in logs if n.startswith("serverapp-"))
    # `flwr log` (saved by run-local) shows the governance of every round, each line once.
    lines = governance_lines(serverapp_log.read_text())
    name = "local-digits-2n-3r-s1"
    assert len(lines) == len(set(lines)), "a governance line reached the log twice"
    assert lines[0].startswith(f"accute run {name}: task digits, 3 rounds, dp local (unit record)")
    for number in (1, 2, 3):
        assert f"round {number}/3: admitted 2 tenant(s): tenant-0, tenant-1" in lines
    for tenant_name, tenant in report["tenants"].items():
        epsilon = f"{tenant['epsilon_run']:.4f}"
        assert tenant["epsilon_run"] == tenant["epsilon_spent"]  # a fresh database: lifetime = this run
        assert (
            f"round 3/3: {tenant_name} accepted; epsilon this run {epsilon}, lifetime {epsilon} "
            "(record level, delta 1e-05)" in lines
        )
    final = report["final"]
    assert lines[-1].startswith(f"accute run {name}: ")
    assert f"model {final['model_name']} version {final['model_version']}" in lines[-1]
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_killed_supernode_is_failed_and_the_run_completes(tmp_path: Path) -> None:
    # Prepare: two tenants' nodes and a third node naming an organization that does not exist;
    # all three are required to start (min_nodes = 3); the run has 4 rounds.
    name = "kill-node"
    with deployment(tmp_path / "out") as dep:
        dep.start()
        ghost_org = uuid.uuid4()
        ghost_config = dep.tenants[0] | {
            protocol.NODE_ORGANIZATION: str(ghost_org),
            protocol.NODE_TENANT: "ghost",
            protocol.NODE_STATE_DIR: str(tmp_path / "ghost-state"),
        }
        dep._spawn("ghost", dep.supernode_args(ghost_config, None))
        overrides = run_overrides(name, "digits", 4, DpMode.LOCAL, 2, 3, round_timeout_s=60, **TRAIN)
        assert overrides["min_nodes"] == 3
        run_id = dep.submit(overrides)
        wait_for_round(dep, name, 1)

        # Execute: the node of tenant-1 dies without a word.
        victim = next(p for p in dep.processes if p.name == "tenant-1")
        tree = victim.tree()
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        status = dep.wait(run_id, name)

        # Assert: rounds 2-4 go on with the node that is left (no "only 1 of 2 nodes" abort); the
        # node naming a missing organization was skipped with the reason and stopped nothing.
        assert status == "finished:completed"
        assert outcomes(dep) == {
            **{(1, f"tenant-{i}"): "accepted" for i in range(2)},
            **{(r, "tenant-0"): "accepted" for r in (2, 3, 4)},
            **{(r, "tenant-1"): "failed" for r in (2, 3, 4)},
        }
        assert dep.db_run(name) == ("completed", 4)
        report = json.loads(dep.report(name).read_text())
        assert report["rounds"][1]["statuses"] == {"accepted": 1, "failed": 1}
        assert sorted(report["tenants"]) == ["tenant-0", "tenant-1"]
        lines = governance_lines((dep.logs / f"serverapp-{run_id}.log").read_text())
        assert any(
            line.startswith("round 1/4: skipped node ")
            and f"names organization {ghost_org}, which does not exist" in line
            for line in lines
        ), lines
        assert any(line.startswith("round 4/4: tenant-0 accepted; epsilon this run ") for line in lines)
        assert any(line.startswith("round 4/4: tenant-1 ") and "(failed: " in line for line in lines), lines
        all_pids = [pid for p in dep.processes for pid in p.tree()]
    assert_no_flower_processes_left(all_pids)


def test_killed_serverapp_resumes_at_the_next_round_and_charges_nothing_twice(tmp_path: Path) -> None:
    # Prepare
    name = "resume"
    with deployment(tmp_path / "out") as dep:
        dep.start()
        overrides = run_overrides(name, "digits", 2, DpMode.LOCAL, 2, 2, round_timeout_s=60, **TRAIN)
        dep.submit(overrides)
        wait_for_round(dep, name, 1)

        # Execute: the ServerApp process dies after round 1; the same run is submitted again.
        link = dep.processes[0]
        serverapps = [
            pid for pid in link.tree() if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert serverapps
        for pid in serverapps:
            os.kill(pid, signal.SIGKILL)
        assert dep.db_run(name) is not None
        committed = dep.db_run(name)
        assert committed is not None and committed[0] == "running"
        resumed = dep.submit(overrides)
        status = dep.wait(resumed, name)

        # Assert: the run ended completed; every (round, tenant) judged once; the ledger holds one
        # event per tenant per round, whatever the killed ServerApp had in flight.
        assert status == "finished:completed"
        assert dep.db_run(name) == ("completed", 2)
        assert outcomes(dep) == {(r, f"tenant-{i}"): "accepted" for r in (1, 2) for i in range(2)}
        with transaction(dep.engine) as session:
            run = session.scalar(select(FlRun).where(FlRun.name == name))
            assert run is not None
            assert session.scalar(select(func.count()).select_from(PrivacyLedgerEvent)) == 4
            assert session.scalar(select(func.count()).select_from(FederatedLearningContribution)) == 4
        report = json.loads(dep.report(name).read_text())
        assert [r["round"] for r in report["rounds"]] == [1, 2]
        assert all(len(t["dp_events"]) == 2 for t in report["tenants"].values())


def test_secured_deployment_admits_registered_nodes_only_over_tls(tmp_path: Path) -> None:
    # Prepare: TLS + SuperNode authentication, two registered tenants and one node whose key the
    # operator never registered (it names tenant-0's organization: a would-be impersonator).
    name = "secure"
    with deployment(tmp_path / "out", secure=True) as dep:
        dep.start()
        rogue_key = make_node_key(tmp_path / "rogue", "rogue")
        rogue = dep._spawn("rogue", dep.supernode_args(dep.tenants[0] | {"tenant": "rogue"}, rogue_key))
        overrides = run_overrides(name, "digits", 1, DpMode.LOCAL, 2, 2, round_timeout_s=60, **TRAIN)
        bad = overrides | {"run_name": "bad-config", "rounds": 0}  # what a hand-typed --run-config may hold

        # Execute
        bad_id = dep.submit(bad)
        bad_status = dep.wait(bad_id, timeout_s=180)
        run_id = dep.submit(overrides)
        status = dep.wait(run_id, name)

        # Assert: the bad run failed on its first step with one line naming key, value and range,
        # shown by `flwr ls` and `flwr log`, before any run row, admission or charge.
        expected = "run config rounds=0 is invalid: allowed an integer >= 1 and <= 10000"
        assert bad_status == "finished:failed"
        listed = dep._flwr("ls", CONNECTION, "--run-id", bad_id, "--format", "json")
        assert expected in json.loads(listed[listed.index("{") :])["runs"][0]["status-details"]
        assert expected in (dep.logs / f"serverapp-{bad_id}.log").read_text()
        assert dep.db_run("bad-config") is None
        # The run completed with the two registered tenants; the rogue never got in.
        assert status == "finished:completed"
        assert outcomes(dep) == {(1, "tenant-0"): "accepted", (1, "tenant-1"): "accepted"}
        listed = dep._flwr("supernode", "ls", CONNECTION, "--format", "json")
        nodes = json.loads(listed[listed.index("{") :])["nodes"]
        assert len(nodes) == 2 and all(n["status"] == "online" for n in nodes)
        rogue_log = rogue.log_path.read_text()
        assert "Connection attempt failed" in rogue_log  # refused, retrying or given up
        assert rogue.running() or rogue.process.returncode != 0
        # Only TLS is spoken: plain HTTP to the SuperLink gets no answer, and the config has no way back.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{dep.superlink_port}/health", timeout=2)
        assert "insecure" not in (dep.flwr_home / "config.toml").read_text()
        assert oct((tmp_path / "out" / "credentials" / "server.key").stat().st_mode & 0o777) == "0o600"


def test_process_tree_lists_descendants() -> None:
    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    try:
        time.sleep(0.3)
        tree = process_tree(child.pid)
        assert tree[0] == child.pid and len(tree) == 2
    finally:
        for pid in reversed(process_tree(child.pid)):
            os.kill(pid, signal.SIGKILL)
        child.wait()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        # SuperNodes name their state dir under the output folder; the SuperLink runs in it.
        if (text in cmdline or cwd.startswith(text)) and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_interrupted_run_local_stops_its_processes_and_says_so(
    tmp_path: Path, sig: signal.Signals, code: int, word: str
) -> None:
    # Prepare: a run-local whose SuperNodes are up.
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("ACCUTE_DATABASE_URL", "ACCUTE_WEIGHTS_DIR")}
    command = [str(Path(".venv/bin/accute-fl").resolve()), "run-local", "--task", "digits", "--nodes", "2"]
    process = subprocess.Popen(
        [*command, "--rounds", "20", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A shell's background job ignores SIGINT; give the child the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (out / "logs" / "tenant-1.log").exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    time.sleep(2)
    assert len(_processes_mentioning(str(out))) >= 3, "the SuperLink and SuperNodes were not started"

    # Execute
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=90)

    # Assert: the documented exit code, one line saying what happened, no Flower process left.
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: {word}; unfinished work was rolled back")
    time.sleep(0.5)
    assert _processes_mentioning(str(out)) == []
