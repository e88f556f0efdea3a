"""The per-round progress of `simulate` and `run-local`: this run's ε and the lifetime ε, labelled apart.

A second run over the same tenants (their ledgers carry over) is where the two differ: the
progress must show the run's own ε, equal to the report's ``epsilon_run``, beside the lifetime
``epsilon``, on both backends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from fl_server.config import RunConfig
from fl_server.round_epsilon import RoundEpsilon
from fl_server.strategy import RoundRecord
from orchestrator.cli.run_local_command import RoundPrinter
from orchestrator.cli.simulate_command import DETAIL_WIDTH, progress_detail
from schema.config import Settings
from simulations.runner import simulate
from simulations.scenario import SimulationSpec
from tests.simulations.conftest import in_process


class Recorder:
    """A progress that keeps what ``simulate`` hands it each round."""

    def __init__(self) -> None:
        self.rounds: list[tuple[int, RoundEpsilon | None]] = []

    def started(self, spec: SimulationSpec, config: RunConfig, label: str) -> None:
        pass

    def round_done(self, record: RoundRecord, epsilon: RoundEpsilon | None) -> None:
        self.rounds.append((record.server_round, epsilon))

    def finished(self) -> None:
        pass


@pytest.mark.parametrize("dp", ["local", "central"])
def test_progress_shows_this_runs_epsilon_beside_the_lifetime_one(
    engine: Engine, tmp_path: Path, dp: str
) -> None:
    # Prepare: a first run charges the two tenants; the second reuses them (not fresh).
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False), weights_dir=tmp_path / "w"
    )
    base = {"out": str(tmp_path / "out"), "tenants": 2, "steps": 5, "dp": dp, "epsilon_cap": 100.0}
    simulate(
        SimulationSpec(**base, rounds=1, run_name="first"), settings, executor=in_process, baseline=False
    )
    recorder = Recorder()
    # Central events carry no run id: a run knows its own by round, parameters and a stamp at or
    # after its start, and SQLite's stamps have whole seconds. Two runs of one tenant started in the
    # same second cannot be told apart (a known limitation, README "Simulations and validation"), so
    # the second run starts in the next second.
    time.sleep(1.05)

    # Execute
    result = simulate(
        SimulationSpec(**base, rounds=2, run_name="second"),
        settings,
        executor=in_process,
        progress=recorder,
        baseline=False,
    )

    # Assert: per round, the largest run epsilon and the largest lifetime epsilon of the report.
    report = result.main.report
    assert [number for number, _ in recorder.rounds] == [1, 2]
    for (_number, epsilon), row in zip(recorder.rounds, report["rounds"], strict=True):
        assert epsilon is not None and epsilon.unit == report["unit"]
        assert epsilon.run is not None and epsilon.lifetime is not None
        assert epsilon.run == pytest.approx(max(row["epsilon_run"].values()), rel=1e-9)
        assert epsilon.lifetime == pytest.approx(max(row["epsilon"].values()), rel=1e-9)
        assert 0 < epsilon.run < epsilon.lifetime
        detail = progress_detail(2, 2, 0, "0.9000", epsilon)
        assert f"ε run {epsilon.run:.2f} life {epsilon.lifetime:.2f}" in detail
        assert len(detail) <= DETAIL_WIDTH


def test_run_local_round_lines_show_both_epsilons(run_sim: Callable[..., object], engine: Engine) -> None:
    # Prepare: two runs over the same tenants in the database run-local polls.
    run_sim(run_name="earlier", rounds=1, tenants=2, steps=5)
    result = run_sim(run_name="polled", rounds=2, tenants=2, steps=5)
    url = engine.url.render_as_string(hide_password=False)

    # Execute
    lines = RoundPrinter(url, "polled", 2).new_lines(engine)

    # Assert
    rounds = json.loads(json.dumps(result.main.report))["rounds"]  # type: ignore[attr-defined]
    assert len(lines) == 2
    for line, row in zip(lines, rounds, strict=True):
        run = max(row["epsilon_run"].values())
        life = max(row["epsilon"].values())
        assert line.endswith(f"ε run {run:.2f} life {life:.2f}"), line
        assert run < life


def test_the_progress_detail_keeps_epsilon_when_the_counts_are_long() -> None:
    epsilon = RoundEpsilon(123.456, 1234.5, "record")

    detail = progress_detail(100, 100, 99_999, "0.9876", epsilon)

    assert len(detail) <= DETAIL_WIDTH
    assert detail.startswith("100/100 ok") and detail.endswith("ε run 123.46 life 1234.50")
    assert progress_detail(1, 1, 0, "-", None).endswith("ε run - life -")
