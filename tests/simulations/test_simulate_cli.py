"""`accute-fl simulate`: bad input is one line and a non-zero exit with nothing written; one real run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli import context
from orchestrator.cli.main import main


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ACCUTE_DATABASE_URL", f"sqlite:///{tmp_path / 'sim.db'}")
    monkeypatch.setenv("ACCUTE_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.chdir(tmp_path)
    context.reset()
    yield tmp_path
    context.reset()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenants", "0"], "tenants"),
        (["--dp", "sometimes"], "dp"),
        (["--partition", "zipf"], "partition"),
        (["--fraction", "1.5"], "fraction"),
        (["--noise-multiplier", "1", "--target-epsilon", "2"], "not both"),
        (["--target-epsilon", "2", "--dp", "off"], "target-epsilon"),
        (["--cap", "tenant-9=1"], "tenant-9"),
        (["--cap", "tenant-1"], "tenant-K=EPSILON"),
        (["--cap", "tenant-1=-1"], "positive"),
        (["--withdraw", "1:tenant-1"], "ROUND:TENANT:COUNT"),
        (["--withdraw", "99:tenant-1:1"], "ROUND"),
        (["--withdraw", "1:tenant-1:500"], "consenting users"),
        (["--erasure", "1:bob"], "tenant-K"),
        (["--sweep", "eps=1,2"], "epsilon=E1"),
        (["--sweep", "epsilon=1,x"], "not a number"),
        (["--task", "poetry"], "poetry"),
        (["--delta", "2"], "delta"),
        (["--seed", "0"], "seed"),
        (["--config", "missing.toml"], "does not exist"),
        (["--central-noise-multiplier", "2", "--dp", "local"], "need --dp central"),
        (["--central-clip", "0"], "central-clip"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(["simulate", "--out", "rep", *args])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (workdir / "rep").exists() and not (workdir / "sim.db").exists()


def test_bad_toml_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "sim.toml").write_text("[simulation]\ntenants = 3\nrounds = 'many'\n")
    assert main(["simulate", "--config", "sim.toml"]) != 0
    assert "rounds" in capsys.readouterr().err


@pytest.mark.slow
def test_simulate_runs_on_flowers_engine_and_writes_the_report(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a config file overridden by flags.
    (workdir / "sim.toml").write_text("[simulation]\ntenants = 3\nrounds = 5\nsteps = 20\ndp = 'local'\n")

    # Execute
    code = main(
        [
            "simulate",
            "--config",
            "sim.toml",
            "--rounds",
            "2",
            "--cap",
            "tenant-2=0.5",
            "--target-epsilon",
            "3",
            "--out",
            "rep",
            "--quiet",
            "--run-name",
            "e2e",
        ]
    )

    # Assert
    out = capsys.readouterr().out.strip()
    assert code == 0
    assert out == str((workdir / "rep" / "report.json").resolve())
    report = json.loads(Path(out).read_text())
    assert report["config"]["rounds"] == 2 and report["config"]["run_name"] == "e2e"
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(r["skipped"].get("tenant-2") == "rejected_budget" for r in report["rounds"])
    for name in ("tenant-0", "tenant-1"):
        assert 0 < report["tenants"][name]["epsilon_spent"] <= 3.0
    for name in ("tenants.csv", "metric.png", "epsilon.png", "report.md"):
        assert (workdir / "rep" / name).stat().st_size > 0
    # The same run name again is refused before anything runs.
    assert main(["simulate", "--run-name", "e2e", "--out", "rep2"]) != 0
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_that_trains_nothing_exits_non_zero_with_the_reason(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: no user consents (budgets are fine, so the pre-flight lets it start)
    args = ["simulate", "--tenants", "2", "--rounds", "1", "--steps", "5", "--consent-share", "0"]
    # Execute
    code = main([*args, "--out", "rep", "--run-name", "idle", "--quiet"])
    # Assert: exit 9, one line naming the reason, and the report written and saying it in words
    # (Ray's actors may log to stderr too: only our error lines are counted.)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 9
    assert len(errors) == 1 and errors[0].startswith("error: the run trained nothing: "), errors
    err = errors[0]
    assert "rejected_consent" in err
    report = json.loads((workdir / "rep" / "report.json").read_text())
    assert "rejected_consent" in report["nothing_trained"]
    assert "This run trained nothing" in (workdir / "rep" / "report.md").read_text()


def test_central_flags_reach_the_run_config_and_the_local_ones_stay_apart() -> None:
    # Execute
    from simulations.scenario import SimulationSpec

    config = SimulationSpec(
        dp="central", noise_multiplier=0.9, clip=1.5, central_noise_multiplier=4.0, central_clip=0.25
    ).run_config()

    # Assert
    assert (config.central_noise_multiplier, config.central_clip_norm) == (4.0, 0.25)
    assert (config.noise_multiplier, config.clip_norm) == (0.9, 1.5)


def test_round_1_waits_for_every_simulated_node() -> None:
    # Flower's engine registers the simulated SuperNodes while the ServerApp starts: a first round
    # sampling a fraction of the nodes registered so far drew 2 of 10,000 x 0.001.
    from simulations.scenario import SimulationSpec

    # Execute
    config = SimulationSpec(tenants=37, fraction=0.1).run_config()

    # Assert
    assert config.min_nodes == 37


def test_help_shows_defaults_and_choices(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv("COLUMNS", "200")

    # Execute
    code = main(["simulate", "--help"])

    # Assert
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert code == 0
    assert "Number of synthetic tenants. (default: 5)" in text
    assert "DP mode: off, local, central or both. (default: local)" in text
    assert "digits" in text and "time_estimation" in text
    assert "--central-noise-multiplier" in text and "--fresh-tenants" in text


def test_the_progress_detail_fits_an_80_column_line() -> None:
    from fl_server.round_epsilon import RoundEpsilon
    from orchestrator.cli.simulate_command import progress_detail

    detail = progress_detail(3, 3, 0, "0.9876", RoundEpsilon(1.234, 4.567, "record"))
    # spinner 2 + label 8 + bar 6 + "5/5" 8 + elapsed 8 + spaces: 44 left for the detail.
    assert len(detail) <= 44
    assert detail == "3/3 ok 0 skip 0.9876 ε run 1.23 life 4.57"


def test_caps_no_tenant_can_pay_are_refused_by_the_pre_flight_before_flower_starts(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["simulate", "--tenants", "2", "--rounds", "1", "--epsilon-cap", "0.01", "--out", "rep"])

    # Assert: exit 2, one line with the numbers, no report.
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: pre-flight: no tenant can pay for one round") and err.count("\n") == 1, err
    assert "cap 0.01" in err
    assert not (workdir / "rep" / "report.json").exists()
