"""Synthetic firms: deterministic per seed, owned by the firm's users, skewed like real firms."""

from __future__ import annotations

import statistics
import uuid
from collections import Counter

import numpy as np
import pytest

from fl_client.tasks import get_task
from fl_client.tasks.digits import digits_records
from schema.errors import InvalidInputError
from simulations.synthetic import SYNTHETIC_TASKS, digits_split, firm_profile, firm_user_ids, tenant_records


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_same_seed_same_records_other_seed_other_records(task: str) -> None:
    # Execute
    first = tenant_records(task, seed=1, tenant_index=2, num_tenants=4, n_records=30)
    again = tenant_records(task, seed=1, tenant_index=2, num_tenants=4, n_records=30)
    other = tenant_records(task, seed=2, tenant_index=2, num_tenants=4, n_records=30)

    # Assert
    assert first == again
    assert first != other
    get_task(task).encode(first)  # every record is valid input for its model type


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_records_belong_to_the_given_users(task: str) -> None:
    # Prepare
    users = [str(uuid.uuid4()) for _ in range(4)]

    # Execute
    records = tenant_records(task, seed=0, tenant_index=0, user_ids=users, num_tenants=3, n_records=200)

    # Assert
    owners = Counter(r["user_id"] for r in records)
    assert set(owners) <= set(users)
    assert len(owners) >= 2


def test_default_user_ids_are_stable_uuids() -> None:
    # Execute
    ids = firm_user_ids(5, 3)

    # Assert
    assert ids == firm_user_ids(5, 3)
    assert len(ids) == firm_profile(5, 3).n_users == len(set(ids))
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert set(ids).isdisjoint(firm_user_ids(5, 4))


def test_firms_differ_in_size_specialty_and_pace() -> None:
    # Execute
    profiles = [firm_profile(0, i) for i in range(20)]
    hours = [
        statistics.mean(float(r["hours"]) for r in tenant_records("time_estimation", seed=0, tenant_index=i))
        for i in range(8)
    ]
    top_service = {int(np.argmax(p.service_mix)) for p in profiles}

    # Assert
    assert len({p.size for p in profiles}) >= 3
    assert max(p.n_records for p in profiles) > 5 * min(p.n_records for p in profiles)
    assert len(top_service) >= 4
    assert max(hours) > 1.5 * min(hours)


def test_digits_tenants_share_the_training_split_exactly_once() -> None:
    # Prepare: the tenants share every digit but the server's fixed test split.
    train, _ = digits_split()
    every = digits_records()
    pixels = [tuple(v for k, v in every[int(i)].items() if k != "label") for i in train]

    # Execute
    shares = [
        tenant_records(
            "digits", seed=9, tenant_index=i, num_tenants=5, partition_scheme="dirichlet", alpha=0.3
        )
        for i in range(5)
    ]
    seen = Counter(
        tuple(v for k, v in r.items() if k not in ("label", "user_id")) for share in shares for r in share
    )

    # Assert
    assert sum(map(len, shares)) == len(pixels)
    assert seen == Counter(pixels)


def test_unknown_task_and_out_of_range_tenant_are_rejected() -> None:
    # Execute / Assert
    with pytest.raises(InvalidInputError, match="no synthetic data"):
        tenant_records("payroll_fraud", seed=0, tenant_index=0)
    with pytest.raises(InvalidInputError, match="out of range"):
        tenant_records("digits", seed=0, tenant_index=3, num_tenants=3)
