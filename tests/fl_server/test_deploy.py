"""Processes run-local starts do not outlive it: parent-death signal and the marker pidfile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_server.deploy import MARKER_ENV, PIDFILE, _alive, clean_stale_processes


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_child_started_with_die_with_parent_dies_when_its_parent_is_killed() -> None:
    # Prepare: a parent (standing in for run-local) starts a long child the way LocalDeployment does.
    script = (
        "import subprocess, sys, time\n"
        "from fl_server.deploy import die_with_parent\n"
        "child = subprocess.Popen(['sleep', '60'], start_new_session=True, preexec_fn=die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=dict(os.environ))
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)

    # Execute: SIGKILL the parent (no cleanup code of its own runs).
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=5)

    # Assert
    assert _gone(child)


def test_the_next_start_kills_what_a_killed_run_local_left_behind(tmp_path: Path) -> None:
    # Prepare: a detached process carrying an earlier run-local's marker, and an unrelated one.
    marker = "earlier-run-local"
    (tmp_path / PIDFILE).write_text(json.dumps({"marker": marker, "pid": 1}))
    left = subprocess.Popen(["sleep", "60"], env={**os.environ, MARKER_ENV: marker}, start_new_session=True)
    other = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, MARKER_ENV: "another"}, start_new_session=True
    )
    try:
        # Execute
        killed = clean_stale_processes(tmp_path)

        # Assert: only the marked one, and the pidfile is gone.
        left.wait(timeout=5)
        assert killed == [left.pid]
        assert other.poll() is None
        assert not (tmp_path / PIDFILE).exists()
    finally:
        other.kill()
        other.wait()
        if left.poll() is None:
            left.kill()


def test_the_cli_error_names_the_serverapps_last_exception() -> None:
    from fl_server.deploy import last_exception_line

    log = (
        "\x1b[92mINFO \x1b[0m:      configure_train: Sampled 3 nodes (out of 3)\n"
        "Traceback (most recent call last):\n"
        '  File "/x/fl_server/strategy.py", line 200, in start\n'
        "    raise TimeoutError(f'only {n} of {m} nodes connected')\n"
        "TimeoutError: only 2 of 3 nodes connected\n"
        "\x1b[92mINFO \x1b[0m:      Run finished\n"
    )
    assert last_exception_line(log) == "TimeoutError: only 2 of 3 nodes connected"
    assert (
        last_exception_line("schema.errors.ConflictError: run 'r' is driven by server h:1:a\n")
        == "schema.errors.ConflictError: run 'r' is driven by server h:1:a"
    )
    assert last_exception_line("INFO : all rounds done\nINFO : published\n") is None


def test_a_servers_refusal_in_its_log_maps_to_the_typed_error() -> None:
    from fl_server.deploy import refusal_from_cause
    from orchestrator.security.threat_intel import ThreatListedError
    from schema.errors import ConflictError

    conflict = refusal_from_cause("schema.errors.ConflictError: run 'r' is driven by server h:1:a")
    listed = refusal_from_cause("orchestrator.security.threat_intel.ThreatListedError: FAB abc is listed")

    assert isinstance(conflict, ConflictError) and str(conflict) == "run 'r' is driven by server h:1:a"
    assert isinstance(listed, ThreatListedError) and str(listed) == "FAB abc is listed"
    assert refusal_from_cause("TimeoutError: only 2 of 3 nodes connected") is None
    assert refusal_from_cause(None) is None


# --- the SuperLink connection an operator writes (README "Deployment") -----------------------------

CONNECT = ["deploy", "connection", "--name", "accute-prod", "--address", "link.example.com:9093"]
HEAVY = ("torch", "opacus", "flwr")


def _flower_reads(home: Path, name: str) -> tuple[str | None, str | None, bool]:
    """The connection as Flower's own config loader parses it (in a fresh interpreter, FLWR_HOME set)."""
    script = (
        "import json, sys\n"
        "from flwr.cli.flower_config import read_superlink_connection\n"
        "c = read_superlink_connection(sys.argv[1])\n"
        "print(json.dumps([c.address, c.root_certificates, c.insecure]))\n"
    )
    env = dict(os.environ) | {"FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    address, certificates, insecure = json.loads(done.stdout.strip().splitlines()[-1])
    return address, certificates, insecure


def test_deploy_connection_twice_leaves_one_entry_flower_parses_and_keeps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an operator's FLWR_HOME that already holds another connection.
    import tomllib

    from orchestrator.cli.main import main

    home = tmp_path / ".flwr-accute"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "other"\n\n[superlink.other]\naddress = "10.0.0.1:9093"\n'
    )
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("FLWR_HOME", str(home))

    # Execute: the README's step, run twice (the second time with the address changed).
    first = main([*CONNECT, "--root-certificates", str(ca)])
    second = main([*CONNECT[:-1], "link.example.com:9094", "--root-certificates", str(ca)])

    # Assert: one [superlink.accute-prod] entry (the latest), the other entry and default kept.
    assert (first, second) == (0, 0), capsys.readouterr().err
    text = (home / "config.toml").read_text()
    assert text.count("[superlink.accute-prod]") == 1
    parsed = tomllib.loads(text)["superlink"]
    assert parsed["default"] == "other"
    assert parsed["other"] == {"address": "10.0.0.1:9093"}
    assert _flower_reads(home, "accute-prod") == ("link.example.com:9094", str(ca.resolve()), False)
    assert _flower_reads(home, "other") == ("10.0.0.1:9093", None, False)
    assert [p.name for p in home.iterdir()] == ["config.toml"]  # no temporary file left behind


def test_deploy_connection_refuses_bad_input_in_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from orchestrator.cli.main import main

    home = tmp_path / "home"
    monkeypatch.setenv("FLWR_HOME", str(home))

    # Execute
    codes = [
        main([*CONNECT[:-1], "link.example.com"]),
        main([*CONNECT, "--insecure", "--root-certificates", str(tmp_path / "missing.crt")]),
        main([*CONNECT, "--root-certificates", str(tmp_path / "missing.crt")]),
    ]

    # Assert
    assert codes == [2, 2, 2]
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert "HOST:PORT" in errors[0] and "exclude each other" in errors[1] and "does not exist" in errors[2]
    assert not home.exists()


def test_deploy_connection_starts_without_flower_or_torch(tmp_path: Path) -> None:
    # Prepare
    probe = (
        "import json, sys\n"
        "from orchestrator.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        f"print(json.dumps([code, [m for m in {list(HEAVY)!r} if m in sys.modules]]))\n"
    )
    env = dict(os.environ) | {"FLWR_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path.cwd())}

    # Execute
    done = subprocess.run(
        [sys.executable, "-c", probe, *CONNECT, "--insecure", "--default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Assert
    assert done.returncode == 0, done.stderr
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert (code, loaded) == (0, [])
    assert 'default = "accute-prod"' in (tmp_path / "home" / "config.toml").read_text()
