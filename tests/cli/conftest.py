"""CLI tests run `accute-fl` in-process through its real entry point, against each backend."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator.cli import context
from orchestrator.cli.main import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Runner = Callable[..., Result]


@pytest.fixture
def cli(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runner]:
    """Run the CLI with ACCUTE_DATABASE_URL pointing at this test's isolated database (and a KEK
    file of its own: creating a user seals the address under a key wrapped by the KEK)."""
    monkeypatch.setenv("ACCUTE_DATABASE_URL", database_url)
    monkeypatch.setenv("ACCUTE_KEK_FILE", str(tmp_path_factory.mktemp("kek") / "kek.json"))
    context.reset()

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield run
    context.reset()


@pytest.fixture
def ready_cli(cli: Runner) -> Runner:
    """The CLI on a database already upgraded to head."""
    assert cli("db", "upgrade").code == 0
    return cli
