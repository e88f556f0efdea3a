"""Partitions cover every example exactly once, are seeded, and skew the way their names say."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schema.errors import InvalidInputError
from simulations.partitions import PARTITION_SCHEMES, POOL_RECORDS, partition, pool_count


def _labels(n: int, classes: int = 10) -> np.ndarray:
    return np.arange(n) % classes


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=400),
    parts=st.integers(min_value=1, max_value=40),
    scheme=st.sampled_from(PARTITION_SCHEMES),
    alpha=st.floats(min_value=0.05, max_value=10.0),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_every_example_lands_in_exactly_one_part(
    n: int, parts: int, scheme: str, alpha: float, seed: int
) -> None:
    # Execute
    result = partition(_labels(n), parts, scheme, seed, alpha)

    # Assert
    assert len(result) == parts
    if n >= parts or n == 0:
        assert np.array_equal(np.sort(np.concatenate(result)), np.arange(n))
        assert n == 0 or all(len(p) > 0 for p in result)
    else:  # more tenants than examples: shared pools, each covering its examples once
        pools = {tuple(p.tolist()) for p in result}
        assert len(pools) == pool_count(n, parts)
        assert np.array_equal(np.sort(np.concatenate([np.asarray(p) for p in pools])), np.arange(n))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_more_tenants_than_examples_share_pools_evenly(scheme: str) -> None:
    # Prepare: 1,437 examples (the digits training split) over 10,000 tenants.
    labels = _labels(1437)

    # Execute
    result = partition(labels, 10_000, scheme, seed=7, alpha=0.5)

    # Assert: every tenant holds data; 143 pools of the whole set, each held by 69 or 70 tenants.
    assert len(result) == 10_000 and all(len(p) > 0 for p in result)
    holders: dict[tuple[int, ...], int] = {}
    for part in result:
        holders[tuple(part.tolist())] = holders.get(tuple(part.tolist()), 0) + 1
    assert len(holders) == 1437 // POOL_RECORDS == pool_count(1437, 10_000)
    assert set(holders.values()) <= {10_000 // len(holders), 10_000 // len(holders) + 1}
    assert np.array_equal(np.sort(np.concatenate([np.asarray(p) for p in holders])), np.arange(1437))
    again = partition(labels, 10_000, scheme, seed=7, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(result, again, strict=True))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_same_seed_same_partition(scheme: str) -> None:
    # Execute
    first = partition(_labels(500), 7, scheme, seed=3)
    again = partition(_labels(500), 7, scheme, seed=3)
    other = partition(_labels(500), 7, scheme, seed=4)

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_skews_labels_and_size_skews_sizes() -> None:
    # Prepare
    labels = _labels(2000)

    # Execute
    iid = partition(labels, 10, "iid", seed=0)
    skewed = partition(labels, 10, "dirichlet", seed=0, alpha=0.1)
    sized = partition(labels, 10, "size", seed=0)

    # Assert
    def dominant_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))

    assert dominant_share(iid) < 0.15
    assert dominant_share(skewed) > 0.4
    assert max(map(len, iid)) - min(map(len, iid)) <= 1
    assert max(map(len, sized)) > 3 * min(map(len, sized))


def test_unknown_scheme_and_bad_alpha_are_rejected() -> None:
    # Execute / Assert
    with pytest.raises(InvalidInputError, match="iid, dirichlet, size"):
        partition(_labels(10), 2, "round_robin", seed=0)
    with pytest.raises(InvalidInputError, match="alpha"):
        partition(_labels(10), 2, "dirichlet", seed=0, alpha=0.0)
