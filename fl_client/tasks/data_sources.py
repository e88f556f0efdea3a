"""Where a tenant node reads its records: a CSV or Parquet file, a SQL query, or the synthetic firms.

Every source yields flat records with a `user_id` (UUID text); the consent filter below is the
only way records reach training (`fl_client.dp_training.train` applies it before encoding), so a
record of a user outside the consent snapshot never touches the model.

A ClientApp builds its source from the node config with `source_from_config`.
"""

from __future__ import annotations

import csv
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fl_client.tasks.registry import get_task
from fl_client.tasks.spec import Record
from schema.errors import ConfigurationError, InvalidInputError

USER_ID = "user_id"


def normalize_user_id(value: Any) -> str:
    """The canonical text of a user id (lower-case hyphenated UUID), whatever form a source stores."""
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidInputError(f"record has user_id {value!r}, which is not a UUID") from None


def _with_user_id(record: Mapping[str, Any]) -> dict[str, Any]:
    if record.get(USER_ID) is None:
        raise InvalidInputError(f"record has no {USER_ID!r}; every tenant record must name its user")
    return {**record, USER_ID: normalize_user_id(record[USER_ID])}


def filter_by_consent(records: Iterable[Record], consented_user_ids: Collection[str]) -> list[dict[str, Any]]:
    """Only the records of users in the consent snapshot (ids compared in canonical UUID form)."""
    allowed = {normalize_user_id(u) for u in consented_user_ids}
    kept: list[dict[str, Any]] = []
    for record in records:
        normalized = _with_user_id(record)
        if normalized[USER_ID] in allowed:
            kept.append(normalized)
    return kept


class DataSource(ABC):
    """Records of one tenant for one model type; `records()` may be called again (each call re-reads)."""

    @abstractmethod
    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, each with a canonical `user_id`."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.records()

    def consented(self, consented_user_ids: Collection[str]) -> list[dict[str, Any]]:
        """The records the node may train on under this consent snapshot."""
        return filter_by_consent(self.records(), consented_user_ids)


@dataclass(frozen=True)
class InMemorySource(DataSource):
    """Records already in memory (tests, simulations that pre-built partitions)."""

    rows: Sequence[Record]

    def records(self) -> Iterator[dict[str, Any]]:
        for row in self.rows:
            yield _with_user_id(row)


@dataclass(frozen=True)
class CsvSource(DataSource):
    """A CSV file with a header; values arrive as text and the task's encoder coerces them."""

    path: Path

    def records(self) -> Iterator[dict[str, Any]]:
        path = Path(self.path)
        if not path.is_file():
            raise InvalidInputError(f"cannot read CSV {path}: no such file")
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                yield _with_user_id(row)


def write_csv(path: Path, records: Sequence[Record]) -> None:
    """Write records as CSV (the columns of the first record), e.g. to export synthetic firms."""
    if not records:
        raise InvalidInputError("no records to write")
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


@dataclass(frozen=True)
class ParquetSource(DataSource):
    """A Parquet file, read in batches; needs pyarrow, which the project does not install by default."""

    path: Path
    batch_size: int = 10_000

    def records(self) -> Iterator[dict[str, Any]]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigurationError(
                "reading Parquet needs pyarrow: run `.venv/bin/pip install pyarrow`, or export the data as CSV"
            ) from None
        try:
            parquet = pq.ParquetFile(self.path)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot read Parquet {self.path}: {exc}") from None
        for batch in parquet.iter_batches(batch_size=self.batch_size):
            for row in batch.to_pylist():
                yield _with_user_id(row)


@dataclass(frozen=True)
class SqlSource(DataSource):
    """A SQL query on the tenant's own database; it must select the task's columns and `user_id`.

    The query runs as given with bound `params` (never string-formatted), read-only by intent:
    point the engine at a role that can only read.
    """

    engine: sa.Engine
    query: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def records(self) -> Iterator[dict[str, Any]]:
        try:
            with self.engine.connect() as connection:
                result = connection.execute(sa.text(self.query), dict(self.params))
                for row in result.mappings():
                    yield _with_user_id(dict(row))
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise InvalidInputError(f"data query failed: {type(exc).__name__}: {cause}") from None


@dataclass(frozen=True)
class SyntheticSource(DataSource):
    """A synthetic firm from simulations/ (imported only when read, so nodes never need it)."""

    task: str
    seed: int
    tenant_index: int
    user_ids: Sequence[str] | None = None
    #: Renames the firm's user ids (``simulations.synthetic.firm_user_ids``): fresh-tenant runs.
    user_namespace: str = ""
    n_records: int | None = None
    num_tenants: int = 1
    partition_scheme: str = "iid"
    alpha: float = 0.5

    def records(self) -> Iterator[dict[str, Any]]:
        from simulations.synthetic import tenant_records

        rows = tenant_records(
            get_task(self.task).name,
            seed=self.seed,
            tenant_index=self.tenant_index,
            user_ids=self.user_ids,
            user_namespace=self.user_namespace,
            n_records=self.n_records,
            num_tenants=self.num_tenants,
            partition_scheme=self.partition_scheme,
            alpha=self.alpha,
        )
        for row in rows:
            yield _with_user_id(row)


SOURCE_KINDS: tuple[str, ...] = ("csv", "parquet", "sql", "synthetic")


def _required(config: Mapping[str, Any], key: str, kind: str) -> Any:
    if key not in config or config[key] in (None, ""):
        raise ConfigurationError(f"data source {kind!r} needs {key!r} in the node config")
    return config[key]


def source_from_config(config: Mapping[str, Any], task: str) -> DataSource:
    """A source from a Flower node config, e.g. `data-source="csv" data-path="/srv/hours.csv"`.

    Keys: `data-source` (csv | parquet | sql | synthetic); csv/parquet: `data-path`; sql:
    `data-url` (SQLAlchemy URL) and `data-query`; synthetic: `data-seed`, `tenant-index`, optional
    `user-namespace` (fresh-tenant runs), and for digits `num-tenants`, `partition`, `alpha`.
    """
    kind = str(config.get("data-source", ""))
    if kind in ("csv", "parquet"):
        path = Path(str(_required(config, "data-path", kind)))
        return CsvSource(path) if kind == "csv" else ParquetSource(path)
    if kind == "sql":
        engine = sa.create_engine(str(_required(config, "data-url", kind)))
        return SqlSource(engine, str(_required(config, "data-query", kind)))
    if kind == "synthetic":
        return SyntheticSource(
            task=task,
            seed=int(config.get("data-seed", 0)),
            tenant_index=int(_required(config, "tenant-index", kind)),
            user_namespace=str(config.get("user-namespace", ""))[:200],
            num_tenants=int(config.get("num-tenants", 1)),
            partition_scheme=str(config.get("partition", "iid")),
            alpha=float(config.get("alpha", 0.5)),
        )
    raise ConfigurationError(
        f"unknown data-source {kind!r} in the node config; known: {', '.join(SOURCE_KINDS)}"
    )
