"""Fixtures for the tenant-node tests: one thread (deterministic, fair on a shared CPU), small firms."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from simulations.synthetic import firm_user_ids, tenant_records


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def firm_records(task: str, n: int = 400, tenant_index: int = 1) -> list[dict[str, object]]:
    """A synthetic firm's records for `task` (digits: one tenant of five users holds all of them)."""
    if task == "digits":
        users = firm_user_ids(7, 0, count=5)
        return tenant_records("digits", seed=7, tenant_index=0, num_tenants=1, user_ids=users)[:n]
    return tenant_records(task, seed=7, tenant_index=tenant_index, n_records=n)
