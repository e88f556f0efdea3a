"""Set up a federation of synthetic tenants in the database and run it on Flower's simulation engine.

``prepare_federation`` creates one organization per tenant with the firm's users (their ids are the
synthetic firm's, so every record belongs to a real ``users`` row), grants the consents a share of
them hold, sets budget caps, and writes the manifest that tells each simulated SuperNode which
tenant it is (in bulk, a transaction per thousand tenants: ``simulations.tenants``). ``run_federation`` runs the same ServerApp and ClientApp as a deployment.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from consent_gate.policy import ConsentPolicy
from fl_client import protocol
from fl_client.app import MANIFEST_ENV, make_client_app
from fl_server.app import make_server_app
from fl_server.config import RunConfig
from fl_server.strategy import RoundRecord, ServerEvaluate
from schema.config import Settings
from simulations.flower_delivery import narrow_delivery_sweep
from simulations.synthetic import firm_user_ids
from simulations.tenants import TenantPlan, prepare_tenants

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp


@dataclass(frozen=True)
class TenantSetup:
    name: str
    organization_id: str
    users: int
    consenting: int
    epsilon_cap: float | None


def tenant_name(index: int) -> str:
    return f"tenant-{index}"


def prepare_federation(
    engine: Engine,
    *,
    task: str,
    tenants: int,
    seed: int,
    manifest_path: Path,
    consent_share: float = 1.0,
    epsilon_caps: Mapping[int, float] | None = None,
    delta: float = 1e-5,
    partition: str = "iid",
    alpha: float = 0.5,
    name_prefix: str = "",
) -> list[TenantSetup]:
    """Create (or reuse) the tenants' organizations, users, consents and caps; write the manifest."""
    required = ConsentPolicy.default().required_consents(task)
    plans: list[TenantPlan] = []
    for index in range(tenants):
        name = tenant_name(index)
        user_ids = firm_user_ids(seed, index, namespace=name_prefix)
        consenting = round(len(user_ids) * consent_share)
        rng = random.Random(f"{seed}:{index}:consent")
        chosen = tuple(rng.sample(user_ids, consenting))
        cap = (epsilon_caps or {}).get(index)
        plans.append(TenantPlan(name, f"{name_prefix}{name}", tuple(user_ids), chosen, cap))
    organization_ids = prepare_tenants(
        engine, plans, model_type=task, required_consents=required, delta=delta
    )
    setups: list[TenantSetup] = []
    nodes: list[dict[str, Any]] = []
    for index, (plan, organization_id) in enumerate(zip(plans, organization_ids, strict=True)):
        setups.append(
            TenantSetup(
                plan.name, str(organization_id), len(plan.user_ids), len(plan.consenting), plan.epsilon_cap
            )
        )
        nodes.append(
            {
                protocol.NODE_ORGANIZATION: str(organization_id),
                protocol.NODE_TENANT: plan.name,
                "data-source": "synthetic",
                "data-seed": seed,
                "tenant-index": index,
                "num-tenants": tenants,
                "partition": partition,
                "alpha": alpha,
            }
            | ({"user-namespace": name_prefix} if name_prefix else {})
        )
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps({"task": task, "tenants": nodes}, indent=2))
    return setups


ENGINE_BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}


def run_federation(
    config: RunConfig,
    settings: Settings,
    manifest_path: Path,
    tenants: int,
    on_round: Callable[[RoundRecord], None] | None = None,
    server_evaluate: ServerEvaluate | None = None,
) -> None:
    """Run the governed ServerApp and the tenant ClientApp on Flower's simulation engine;
    ``server_evaluate`` (the server's test set) gives each round's headline metric."""
    os.environ[MANIFEST_ENV] = str(manifest_path.resolve())
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_log = logging.getLogger("flwr")
    # Quieter only: the CLI may have set ERROR (--quiet, and Flower's deprecation notice); resetting it
    # to WARNING here printed that notice again.
    if flwr_log.level < logging.WARNING:
        flwr_log.setLevel(logging.WARNING)
    run_on_engine(
        make_server_app(config, settings, on_round, server_evaluate),
        make_client_app(),
        tenants,
        narrow_sweep=settings.simulation_narrow_sweep,
    )


def run_on_engine(server_app: ServerApp, client_app: ClientApp, nodes: int, *, narrow_sweep: bool) -> None:
    """Flower's simulation engine (Ray, one CPU per ClientApp, two workers) with the delivery sweep
    the settings choose; the benches run their plain-Flower arms through it too."""
    from flwr.simulation import run_simulation

    with narrow_delivery_sweep(narrow_sweep):
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=nodes,
            backend_config=ENGINE_BACKEND,  # type: ignore[arg-type]
        )
