"""The server-side evaluation of a simulation: a test set no tenant holds, and the pooled training records.

``server_evaluate(spec)`` is the ``ServerEvaluate`` the governed strategy calls after every round:
its value (the task's metric on ``synthetic.server_test_records``) is the round's headline
metric, in DP runs too (evaluating data no tenant holds spends no one's privacy). The centralized
baseline (``simulations.baseline``) is measured on the same records, so the two numbers compare.

``training_records(spec, holdout_fraction)`` are the records the tenants' nodes train on when
every user consents: each tenant's records minus its held-out users (the nodes' keyed split,
``fl_client.holdout``, keyed by the organization id as a simulated node is).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fl_client.holdout import split_users
from simulations.scenario import SimulationSpec
from simulations.synthetic import server_test_records, tenant_records

ServerEvaluate = Callable[[dict[str, np.ndarray]], float | None]

#: Organizations of a simulation are uuid5(SIMULATION_NAMESPACE, name) (simulations.federation).
_SIMULATION_NAMESPACE = uuid.UUID("5d0c3f4e-6a7b-4c1d-9e2f-a1b2c3d4e5f6")


def held_out_records(spec: SimulationSpec) -> list[dict[str, Any]]:
    return server_test_records(spec.task, seed=spec.seed, num_tenants=spec.tenants)


def tenant_organization_id(spec: SimulationSpec, index: int) -> str:
    return str(uuid.uuid5(_SIMULATION_NAMESPACE, f"{spec.org_prefix()}tenant-{index}"))


def tenant_training_records(
    spec: SimulationSpec, index: int, holdout_fraction: float, key: str | None = None
) -> list[dict[str, Any]]:
    """One tenant's records of its non-held-out users; ``key`` keys its split (default: the id
    ``prepare_federation`` gives)."""
    records = tenant_records(
        spec.task,
        seed=spec.seed,
        tenant_index=index,
        num_tenants=spec.tenants,
        partition_scheme=spec.partition,
        alpha=spec.alpha,
    )
    users = sorted({str(r["user_id"]) for r in records})
    training, _ = split_users(key or tenant_organization_id(spec, index), users, holdout_fraction)
    keep = set(training)
    return [r for r in records if str(r["user_id"]) in keep]


def training_records(
    spec: SimulationSpec, holdout_fraction: float, organization_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every tenant's records of its non-held-out users (what the nodes train on at full consent).

    ``organization_ids`` key each tenant's split (default: the ids ``prepare_federation`` gives).
    """
    rows: list[dict[str, Any]] = []
    for index in range(spec.tenants):
        key = organization_ids[index] if organization_ids else None
        rows.extend(tenant_training_records(spec, index, holdout_fraction, key))
    return rows


def metric_of(
    task_name: str, arrays: Mapping[str, np.ndarray], records: list[dict[str, Any]]
) -> float | None:
    """The task's metric of the model ``arrays`` on ``records`` (None when there are none)."""
    import torch

    from fl_client.dp_training import evaluate

    if not records:
        return None
    state = {name: torch.as_tensor(np.asarray(value)) for name, value in arrays.items()}
    value = float(evaluate(task_name, state, records, consented_user_ids=None).value)
    return value if math.isfinite(value) else None


def server_evaluate(spec: SimulationSpec) -> ServerEvaluate:
    """The held-out metric of a round's global model on the server's test set."""
    records = held_out_records(spec)

    def evaluate_on_test_set(arrays: dict[str, np.ndarray]) -> float | None:
        return metric_of(spec.task, arrays, records)

    return evaluate_on_test_set
