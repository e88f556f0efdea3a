"""Flower App Bundles listed in threat intelligence run nothing: refused before ``flwr run`` (by
``run-local``) and again by the ServerApp, from the ``fab_hash`` Flower hands the run."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.run import Run
from sqlalchemy import Engine, func, select

from fl_server.app import run_fab_hash, run_governed
from fl_server.config import DpMode
from fl_server.deploy import (
    CONNECTION,
    LocalDeployment,
    fab_hash,
    last_exception_line,
    project_root,
    run_config_arg,
    run_overrides,
)
from orchestrator.cli.main import main
from orchestrator.security import threat_intel
from orchestrator.security.threat_intel import ThreatListedError
from schema import migrate
from schema.config import Settings
from schema.db import make_engine, transaction
from schema.models import FlRun, ImmutableAuditLog
from tests.fl_server.conftest import Federation
from tests.fl_server.grid_double import LocalGrid

ROOT = project_root()
HASH = fab_hash(ROOT)  # the bundle of this checkout, built by Flower's own builder


def list_hash(engine: Engine, digest: str) -> None:
    csv = (
        "indicator_type,indicator_value,threat_type,severity,source,confidence\n"
        f"hash,{digest.upper()},malicious-activity,critical,test-feed,90\n"
    )
    with transaction(engine) as session:
        threat_intel.import_indicators(session, threat_intel.parse_csv(csv))


def refusals(engine: Engine) -> list[dict[str, Any]]:
    with transaction(engine) as session:
        rows = session.scalars(
            select(ImmutableAuditLog).where(ImmutableAuditLog.action == "threat.fab_refused")
        )
        return [dict(r.action_data) for r in rows]


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


class RunGrid(LocalGrid):
    """The in-process grid carrying a run, as Flower's grid does in a deployment."""

    fab: str = ""

    @property
    def run(self) -> Any:
        run = Run.create_empty(7)
        run.fab_hash = self.fab
        return run


def test_fab_hash_is_the_sha256_of_the_bundle_flower_builds() -> None:
    # Execute
    content = build_fab_from_disk(ROOT)

    # Assert: a real FAB (a zip with the app's pyproject), hashed as Flower hashes it, stable.
    assert hashlib.sha256(content).hexdigest() == HASH
    with zipfile.ZipFile(io.BytesIO(content)) as fab:
        assert "pyproject.toml" in fab.namelist()
        assert "fl_server/app.py" in fab.namelist()
    assert fab_hash(ROOT) == HASH


def test_submit_refuses_a_listed_bundle_before_flwr_run(engine: Engine, tmp_path: Path) -> None:
    # Prepare: no SuperLink is running, so reaching `flwr run` would fail another way.
    settings = Settings(database_url=url_of(engine), weights_dir=tmp_path / "weights")
    deployment = LocalDeployment(tmp_path / "out", "digits", 1, settings=settings)
    overrides = run_overrides("fab-listed", "digits", 1, DpMode.OFF, 0, 1)
    list_hash(engine, HASH)

    # Execute / Assert
    with pytest.raises(ThreatListedError, match=f"Flower App Bundle {HASH} is listed") as refused:
        deployment.submit(overrides)
    deployment.stop()
    assert refused.value.exit_code == 6
    assert refusals(engine) == [{"fab_hash": HASH, "indicator": f"hash:{HASH}", "stage": "submit"}]


def test_serverapp_refuses_a_listed_bundle_before_the_run_exists(
    make_federation: Callable[..., Federation], engine: Engine, tmp_path: Path
) -> None:
    # Prepare: a federation whose grid carries a run started from a listed bundle.
    federation = make_federation(tenants=2)
    grid = RunGrid(federation.grid.client_app, {})
    grid.fab = "ab" * 32
    list_hash(engine, grid.fab)
    settings = Settings(database_url=url_of(engine), weights_dir=tmp_path / "weights")

    # Execute / Assert
    with pytest.raises(ThreatListedError, match="listed in threat intelligence"):
        run_governed(grid, federation.config(rounds=1), settings)
    assert run_fab_hash(grid) == "ab" * 32
    assert grid.sent == []  # no node was asked anything
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(FlRun)) == 0
    assert refusals(engine) == [
        {"fab_hash": "ab" * 32, "indicator": f"hash:{'ab' * 32}", "stage": "serverapp"}
    ]


def test_serverapp_runs_a_bundle_that_is_not_listed(
    make_federation: Callable[..., Federation], engine: Engine, tmp_path: Path
) -> None:
    # Prepare: another bundle is listed, not this one.
    federation = make_federation(tenants=2)
    nodes = {node: dict(context.node_config) for node, context in federation.grid.contexts.items()}
    grid = RunGrid(federation.grid.client_app, nodes)
    grid.fab = "cd" * 32
    list_hash(engine, "ab" * 32)
    settings = Settings(database_url=url_of(engine), weights_dir=tmp_path / "weights")

    # Execute
    _, publication = run_governed(grid, federation.config(rounds=1, dp="off", steps=2), settings)

    # Assert
    assert publication.weights_checksum
    assert refusals(engine) == []


def test_run_local_exits_6_and_starts_no_process_for_a_listed_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the database the deployment will use already lists this checkout's bundle.
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = make_engine(database)
    migrate.upgrade(engine)
    list_hash(engine, HASH)
    monkeypatch.setenv("ACCUTE_DATABASE_URL", database)
    monkeypatch.setenv("ACCUTE_WEIGHTS_DIR", str(tmp_path / "weights"))
    out = tmp_path / "out"

    # Execute
    code = main(["run-local", "--task", "digits", "--nodes", "1", "--rounds", "1", "--out", str(out)])

    # Assert: exit 6 (refused), one line naming the bundle, no Flower process ever started.
    printed = capsys.readouterr()
    assert code == 6, printed.err
    assert f"Flower App Bundle {HASH} is listed in threat intelligence" in printed.err
    assert not (out / "logs" / "superlink.log").exists()
    assert [r["stage"] for r in refusals(engine)] == ["submit"]
    engine.dispose()


@pytest.mark.slow
def test_a_real_serverapp_refuses_a_listed_bundle_started_by_hand(tmp_path: Path) -> None:
    # Prepare: a real SuperLink (no nodes needed: the ServerApp refuses before asking any), and
    # the bundle listed after our own pre-check would have run, i.e. an operator's own `flwr run`.
    out = tmp_path / "out"
    settings = Settings(database_url=f"sqlite:///{out / 'accute.db'}", weights_dir=out / "weights")
    with LocalDeployment(out, "digits", 1, settings=settings, run_timeout_s=240) as deployment:
        deployment.prepare()
        deployment.start_superlink()
        list_hash(deployment.engine, HASH)
        overrides = run_overrides("by-hand", "digits", 1, DpMode.OFF, 0, 1)

        # Execute
        started = deployment._flwr(
            "run", str(ROOT), CONNECTION, "--format", "json", "--run-config", run_config_arg(overrides)
        )
        run_id = str(json.loads(started[started.index("{") :])["run-id"])
        status = deployment.wait(run_id)

        # Assert: Flower's fab_hash is the one we compute; the run failed on our refusal, unclaimed.
        assert status.startswith("finished:failed"), status
        log_text = (deployment.logs / f"serverapp-{run_id}.log").read_text()
        assert last_exception_line(log_text) == (
            f"orchestrator.security.threat_intel.ThreatListedError: the Flower App Bundle {HASH} is listed "
            "in threat intelligence; not run: build it from a trusted checkout, or deactivate the indicator "
            "if it is wrong"
        )
        assert refusals(deployment.engine) == [
            {"fab_hash": HASH, "indicator": f"hash:{HASH}", "stage": "serverapp"}
        ]
        with transaction(deployment.engine) as session:
            assert session.scalar(select(func.count()).select_from(FlRun)) == 0
