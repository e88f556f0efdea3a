"""`accute-fl run-local` around the deployment: the name check before any process, the per-round
lines, and the same report files as `simulate` (no real Flower processes here: see
tests/fl_server/test_run_local.py for those)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from fl_server.report import build_report
from orchestrator.cli.run_local_command import RoundPrinter, check_run_name, write_outputs
from privacy.ledger import LedgerPolicy
from schema.db import transaction
from schema.models import FlRun
from simulations.runner import SimulationResult
from tests.cli.conftest import Runner
from tests.simulations.conftest import run_sim  # noqa: F401 (the fixture)


def _add_run(engine: Engine, name: str, status: str) -> None:
    with transaction(engine) as session:
        session.add(FlRun(name=name, task="digits", config={}, status=status, seen_checksums=[]))


def test_a_completed_run_name_is_refused_before_any_process_starts(
    ready_cli: Runner, database_url: str, tmp_path: Path
) -> None:
    # Prepare
    from schema.db import make_engine

    engine = make_engine(database_url)
    _add_run(engine, "done-before", "completed")
    engine.dispose()
    out = tmp_path / "out"

    # Execute
    result = ready_cli(
        "run-local",
        "--task",
        "digits",
        "--nodes",
        "2",
        "--rounds",
        "1",
        "--out",
        str(out),
        "--run-name",
        "done-before",
    )

    # Assert: exit 4, one line naming the fix, and no deployment folder (logs, database, processes).
    assert result.code == 4
    assert "--run-name" in result.err and "done-before" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (out / "logs").exists()


def test_an_unfinished_run_of_the_name_may_resume_and_a_new_database_has_no_runs(
    engine: Engine, tmp_path: Path
) -> None:
    # Prepare
    _add_run(engine, "stopped", "running")
    url = engine.url.render_as_string(hide_password=False)

    # Execute / Assert: no exception.
    check_run_name(url, "stopped")
    check_run_name(url, "never-seen")
    check_run_name(f"sqlite:///{tmp_path / 'absent.db'}", "anything")
    assert not (tmp_path / "absent.db").exists()


def test_a_line_per_round_and_the_simulate_report_files(
    run_sim: Callable[..., SimulationResult],  # noqa: F811 (the fixture imported above)
    engine: Engine,
    tmp_path: Path,
) -> None:
    # Prepare: a governed run in this database (in-process), its report.json as run-local writes it.
    result = run_sim(run_name="local-like", dp="local", rounds=2, noise_multiplier=1.2, tenants=2)
    url = engine.url.render_as_string(hide_password=False)
    folder = tmp_path / "local-out"
    folder.mkdir()
    report = build_report(engine, "local-like", tmp_path / "w", LedgerPolicy(default_delta=1e-5))
    (folder / "report.json").write_text(json.dumps(report, default=str))

    # Execute
    printer = RoundPrinter(url, "local-like", 2)
    lines = printer.new_lines(engine)
    again = printer.new_lines(engine)
    written = write_outputs(folder / "report.json", url)

    # Assert
    assert [line.split(":")[0] for line in lines] == ["round 1/2", "round 2/2"]
    assert "accepted" in lines[0] and "skipped" in lines[0]
    assert again == []
    assert written == folder / "report.json"
    for name in ("report.md", "tenants.csv", "metric.png", "epsilon.png"):
        assert (folder / name).stat().st_size > 0, name
    assert "# Simulation report: local-like" in (folder / "report.md").read_text()
    assert result.main.report["config"]["run_name"] == "local-like"


def test_a_bad_run_config_value_is_refused_in_one_line_before_anything_starts(
    ready_cli: Runner, tmp_path: Path
) -> None:
    # Prepare
    out = tmp_path / "out"
    base = ("run-local", "--task", "digits", "--nodes", "2", "--rounds", "1", "--out", str(out))

    # Execute
    timeout = ready_cli(*base, "--round-timeout", "0")
    dp = ready_cli(*base, "--dp", "maybe")

    # Assert: exit 2, one line naming the key, the value and what is allowed; nothing created.
    assert timeout.code == 2 and dp.code == 2
    assert timeout.err.strip() == "error: run config round-timeout-s=0.0 is invalid: allowed a number > 0"
    assert len(dp.err.strip().splitlines()) == 1 and "'maybe'" in dp.err and "local" in dp.err
    assert not out.exists()


def test_a_run_that_trained_nothing_is_marked_in_report_json_and_report_md(
    run_sim: Callable[..., SimulationResult],  # noqa: F811 (the fixture imported above)
    engine: Engine,
    tmp_path: Path,
) -> None:
    # Prepare: a run where no user consented, its report.json as run-local writes it.
    from orchestrator.cli.run_local_command import mark_nothing_trained

    run_sim(run_name="idle-local", dp="local", rounds=1, tenants=2, consent_share=0.0)
    url = engine.url.render_as_string(hide_password=False)
    folder = tmp_path / "idle-out"
    folder.mkdir()
    report = build_report(engine, "idle-local", tmp_path / "w", LedgerPolicy(default_delta=1e-5))
    (folder / "report.json").write_text(json.dumps(report, default=str))

    # Execute
    nothing = mark_nothing_trained(folder / "report.json")
    write_outputs(folder / "report.json", url)

    # Assert: the reason counts the statuses, and both report files carry it.
    assert nothing is not None and "rejected_consent" in nothing
    assert json.loads((folder / "report.json").read_text())["nothing_trained"] == nothing
    assert f"This run trained nothing: {nothing}" in (folder / "report.md").read_text()
