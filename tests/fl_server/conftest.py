"""A governed federation of synthetic digits tenants on an in-process grid, per backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from aggregation.weights_store import WeightsStore
from fl_client.app import make_client_app
from fl_server.app import inner_strategy
from fl_server.config import RunConfig
from fl_server.governance import Governor
from fl_server.strategy import GovernedResult, GovernedStrategy
from schema.config import Settings
from simulations.federation import TenantSetup, prepare_federation
from tests.fl_server.grid_double import LocalGrid

NODE_BASE = 1000


@dataclass
class Federation:
    engine: Engine
    tenants: list[TenantSetup]
    grid: LocalGrid
    weights: WeightsStore
    settings: Settings

    def node_of(self, index: int) -> int:
        return NODE_BASE + index

    def config(self, **overrides: Any) -> RunConfig:
        values: dict[str, Any] = {
            "run_name": "test-run",
            "task": "digits",
            "rounds": 2,
            "dp": "local",
            "noise_multiplier": 1.1,
            "clip_norm": 1.0,
            "sample_rate": 0.1,
            "steps": 10,
            "lr": 0.5,
            "seed": 3,
            "round_timeout_s": 2.0,
        }
        return RunConfig(**(values | overrides))

    def strategy(self, config: RunConfig, **kwargs: Any) -> GovernedStrategy:
        governor = Governor(self.engine, config, self.settings)
        return GovernedStrategy(inner_strategy(config), governor, self.weights, **kwargs)

    def run(self, config: RunConfig, **kwargs: Any) -> GovernedResult:
        from aggregation.flwr_adapter import record_from_arrays
        from fl_client.tasks import get_task

        initial = {k: v.numpy() for k, v in get_task(config.task).initial_state(config.seed).items()}
        return self.strategy(config, **kwargs).start(self.grid, record_from_arrays(initial))


@pytest.fixture
def make_federation(engine: Engine, tmp_path: Path) -> Callable[..., Federation]:
    def build(
        tenants: int = 3, consent_share: float = 1.0, caps: dict[int, float] | None = None
    ) -> Federation:
        manifest = tmp_path / "manifest.json"
        setups = prepare_federation(
            engine,
            task="digits",
            tenants=tenants,
            seed=5,
            manifest_path=manifest,
            consent_share=consent_share,
            epsilon_caps=caps,
        )
        nodes = json.loads(manifest.read_text())["tenants"]
        grid = LocalGrid(make_client_app(), {NODE_BASE + i: node for i, node in enumerate(nodes)})
        return Federation(engine, setups, grid, WeightsStore(tmp_path / "weights"), Settings())

    return build
