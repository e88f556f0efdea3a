"""Processes run-local starts do not outlive it: parent-death signal and the marker pidfile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
