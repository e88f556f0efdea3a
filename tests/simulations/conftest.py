"""Simulations on the in-process grid (the real ClientApp, no Flower engine) against a test database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from fl_client.app import make_client_app
from fl_server.app import run_governed
from fl_server.config import RunConfig
from fl_server.strategy import RoundRecord, ServerEvaluate
from schema.config import Settings
from simulations.runner import SimulationResult, simulate
from simulations.scenario import SimulationSpec
from tests.fl_server.grid_double import LocalGrid


def in_process(
    config: RunConfig,
    settings: Settings,
    manifest: Path,
    tenants: int,
    on_round: Callable[[RoundRecord], None],
    server_evaluate: ServerEvaluate | None = None,
) -> None:
    nodes = json.loads(manifest.read_text())["tenants"]
    grid = LocalGrid(make_client_app(), {1000 + i: node for i, node in enumerate(nodes)})
    run_governed(grid, config, settings, on_round, server_evaluate)


@pytest.fixture
def run_sim(engine: Engine, tmp_path: Path) -> Callable[..., SimulationResult]:
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False), weights_dir=tmp_path / "w"
    )

    # Small runs whose per-round ε the governance tests reason about (z = 1.2 at q = 0.1 over 10 steps
    # costs about 1.1 a round): sample rate and learning rate fixed here, not the DP defaults.
    base = {"rounds": 2, "tenants": 3, "steps": 10, "sample_rate": 0.1, "lr": 0.5}

    def run(**values: Any) -> SimulationResult:
        spec = SimulationSpec(**({"out": str(tmp_path / "out")} | base | values))
        return simulate(spec, settings, executor=in_process)

    return run
