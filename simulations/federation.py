"""Set up a federation of synthetic tenants in the database and run it on Flower's simulation engine.

``prepare_federation`` creates one organization per tenant with the firm's users (their ids are the
synthetic firm's, so every record belongs to a real ``users`` row), grants the consents a share of
them hold, sets budget caps, and writes the manifest that tells each simulated SuperNode which
tenant it is. ``run_federation`` runs the same ServerApp and ClientApp as a deployment.
"""

from __future__ import annotations

import json
import logging
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from consent_gate.policy import ConsentPolicy
from consent_gate.records import grant
from fl_client import protocol
from fl_client.app import MANIFEST_ENV, make_client_app
from fl_server.app import make_server_app
from fl_server.config import RunConfig
from fl_server.strategy import RoundRecord, ServerEvaluate
from privacy import ledger
from schema import audit
from schema.config import Settings
from schema.db import transaction
from schema.models import Organization, User
from simulations.synthetic import firm_user_ids


@dataclass(frozen=True)
class TenantSetup:
    name: str
    organization_id: str
    users: int
    consenting: int
    epsilon_cap: float | None


SIMULATION_NAMESPACE = uuid.UUID("5d0c3f4e-6a7b-4c1d-9e2f-a1b2c3d4e5f6")


def tenant_name(index: int) -> str:
    return f"tenant-{index}"


def _create_organization(session: Session, name: str) -> Organization:
    """``create_organization`` with an id derived from the (unique) name.

    Nodes draw their DP noise from a seed that mixes in the organization id, so the same
    simulation seed gives the same run in a fresh database only if the ids are the same too.
    """
    organization = Organization(
        id=uuid.uuid5(SIMULATION_NAMESPACE, name), name=name, billing_model="pay_as_you_go"
    )
    session.add(organization)
    session.flush()
    audit.append(
        session,
        organization_id=organization.id,
        action="organization.created",
        resource_type="organization",
        resource_id=organization.id,
        data={"name": name, "billing_model": "pay_as_you_go", "source": "simulation"},
    )
    return organization


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
    setups: list[TenantSetup] = []
    nodes: list[dict[str, Any]] = []
    for index in range(tenants):
        name = tenant_name(index)
        user_ids = firm_user_ids(seed, index)
        with transaction(engine) as session:
            org_name = f"{name_prefix}{name}"
            organization = session.scalar(select(Organization).where(Organization.name == org_name))
            if organization is None:
                organization = _create_organization(session, org_name)
            existing = set(session.scalars(select(User.id).where(User.organization_id == organization.id)))
            for user_id in user_ids:
                uid = uuid.UUID(user_id)
                if uid not in existing:
                    session.add(
                        User(id=uid, organization_id=organization.id, email=f"{user_id[:8]}@{name}.example")
                    )
            session.flush()
            consenting = round(len(user_ids) * consent_share)
            rng = random.Random(f"{seed}:{index}:consent")
            for user_id in rng.sample(user_ids, consenting):
                for consent_type in required:
                    grant(session, organization.id, user_id, consent_type, reason="simulation")
            cap = (epsilon_caps or {}).get(index)
            if cap is not None:
                ledger.set_budget(
                    session,
                    organization.id,
                    task,
                    cap,
                    delta,
                    policy=ledger.LedgerPolicy(default_delta=delta),
                )
            setups.append(TenantSetup(name, str(organization.id), len(user_ids), consenting, cap))
        nodes.append(
            {
                protocol.NODE_ORGANIZATION: str(organization.id),
                protocol.NODE_TENANT: name,
                "data-source": "synthetic",
                "data-seed": seed,
                "tenant-index": index,
                "num-tenants": tenants,
                "partition": partition,
                "alpha": alpha,
            }
        )
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps({"task": task, "tenants": nodes}, indent=2))
    return setups


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
    from flwr.simulation import run_simulation

    os.environ[MANIFEST_ENV] = str(manifest_path.resolve())
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_log = logging.getLogger("flwr")
    # Quieter only: the CLI may have set ERROR (--quiet, and Flower's deprecation notice); resetting it
    # to WARNING here printed that notice again.
    if flwr_log.level < logging.WARNING:
        flwr_log.setLevel(logging.WARNING)
    run_simulation(
        server_app=make_server_app(config, settings, on_round, server_evaluate),
        client_app=make_client_app(),
        num_supernodes=tenants,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}},
    )
