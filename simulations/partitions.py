"""Seeded partitions of a data set across tenants: IID, label-skewed (Dirichlet) and size-skewed.

flwr-datasets' partitioners work on Hugging Face `datasets` objects (pyarrow, pandas), which this
project does not install; these three follow the same definitions on plain index arrays. Each
returns one index array per tenant; together they cover every example exactly once.

More tenants than examples (10,000 digits tenants share 1,437 training images): ``partition``
then cuts the data into ``n // POOL_RECORDS`` pools under the scheme and gives each tenant one
pool, every pool to about the same number of tenants. **Records are reused across tenants** — a
pool's images are held by about ``num_parts / pools`` tenants — so such a federation measures
scale (rounds, admission, memory), not what a model learns from that many distinct firms; each
tenant's ledger still accounts its own releases of its copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from schema.errors import InvalidInputError

PartitionScheme = Literal["iid", "dirichlet", "size"]
PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "size")
#: With more tenants than examples, the examples of one pool (shared by several tenants).
POOL_RECORDS = 10


def _check(n: int, num_parts: int) -> None:
    if num_parts < 1:
        raise InvalidInputError(f"number of partitions must be at least 1, got {num_parts}")
    if n < 0:
        raise InvalidInputError(f"number of examples must be non-negative, got {n}")


def _split(order: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    bounds = np.cumsum(sizes)[:-1]
    return [np.sort(part) for part in np.split(order, bounds)]


def iid_partition(n: int, num_parts: int, seed: int) -> list[np.ndarray]:
    """A random permutation cut into near-equal parts (sizes differ by at most one)."""
    _check(n, num_parts)
    order = np.random.default_rng(seed).permutation(n)
    sizes = np.full(num_parts, n // num_parts)
    sizes[: n % num_parts] += 1
    return _split(order, sizes)


def size_skewed_partition(n: int, num_parts: int, seed: int, sigma: float = 1.0) -> list[np.ndarray]:
    """IID content, log-normal sizes (firms differ in size far more than in kind); each part gets ≥ 1 when n allows."""
    _check(n, num_parts)
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, sigma, num_parts)
    floor = 1 if n >= num_parts else 0
    spare = n - floor * num_parts
    sizes = np.floor(weights / weights.sum() * spare).astype(np.int64)
    leftover = spare - int(sizes.sum())
    sizes[np.argsort(-weights, kind="stable")[:leftover]] += 1
    sizes += floor
    return _split(rng.permutation(n), sizes)


def dirichlet_partition(
    labels: Sequence[int] | np.ndarray, num_parts: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Per class, shares over tenants drawn from Dirichlet(alpha): small alpha, few classes per tenant.

    An empty part then takes one example from the largest part, so every tenant has data when
    there are at least as many examples as tenants.
    """
    labels_array = np.asarray(labels)
    _check(len(labels_array), num_parts)
    if alpha <= 0:
        raise InvalidInputError(f"dirichlet alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(num_parts)]
    for cls in np.unique(labels_array):
        members = rng.permutation(np.flatnonzero(labels_array == cls))
        shares = rng.dirichlet(np.full(num_parts, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.extend(chunk.tolist())
    if len(labels_array) >= num_parts:
        for part in parts:
            if not part:
                largest = max(parts, key=len)
                part.append(largest.pop())
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def partition(
    labels: Sequence[int] | np.ndarray,
    num_parts: int,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
) -> list[np.ndarray]:
    """Dispatch by scheme name (the `--partition` flag of `accute-fl simulate`); with more tenants
    than examples, tenants share pools (``pooled``)."""
    n = len(labels)
    if 0 < n < num_parts:
        return pooled(labels, num_parts, scheme, seed, alpha)
    if scheme == "iid":
        return iid_partition(n, num_parts, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_parts, alpha, seed)
    if scheme == "size":
        return size_skewed_partition(n, num_parts, seed)
    raise InvalidInputError(f"unknown partition {scheme!r}; known: {', '.join(PARTITION_SCHEMES)}")


def pool_count(n: int, num_parts: int) -> int:
    """How many distinct parts ``partition`` makes: one per tenant, or shared pools when tenants
    outnumber the examples."""
    return num_parts if num_parts <= n else max(1, n // POOL_RECORDS)


def pooled(
    labels: Sequence[int] | np.ndarray, num_parts: int, scheme: str, seed: int, alpha: float = 0.5
) -> list[np.ndarray]:
    """``num_parts`` tenants over ``pool_count`` pools made by ``scheme``: a seeded permutation of
    the tenants dealt round-robin to the pools, so each pool goes to ⌊N/P⌋ or ⌈N/P⌉ tenants."""
    n = len(labels)
    _check(n, num_parts)
    pools = partition(labels, pool_count(n, num_parts), scheme, seed, alpha)
    order = np.random.default_rng([seed, num_parts]).permutation(num_parts)
    return [pools[int(slot) % len(pools)] for slot in order]
