"""The installed `accute-fl` script as a user runs it: real processes, real exit codes, no tracebacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = shutil.which("accute-fl") or str(Path(sys.executable).with_name("accute-fl"))


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_")} | env
    return subprocess.run(
        [SCRIPT, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_default_database_is_sqlite_file_in_working_directory(tmp_path: Path) -> None:
    upgraded = run(["db", "upgrade"], tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "accute.db").is_file()
    current = run(["db", "current"], tmp_path)
    assert current.stdout.strip().endswith("(head)")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("not a url", "not a database URL"),
        ("mysql://root@127.0.0.1/test", "unsupported backend"),
        ("postgresql+psycopg://user:hunter2@127.0.0.1:1/none", "cannot use the database"),
        ("sqlite:////no/such/folder/accute.db", "does not exist"),
    ],
)
def test_bad_database_url_is_one_clean_line(tmp_path: Path, url: str, fragment: str) -> None:
    result = run(["db", "upgrade"], tmp_path, ACCUTE_DATABASE_URL=url)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr  # passwords never printed
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_read_command_on_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    result = run(["org", "list"], tmp_path)
    assert result.returncode == 5
    assert "db upgrade" in result.stderr
    assert not (tmp_path / "accute.db").exists()


def test_help_lists_the_command_groups(tmp_path: Path) -> None:
    result = run(["--help"], tmp_path)
    assert result.returncode == 0
    for group in ("db", "org", "user", "status", "audit"):
        assert group in result.stdout
