"""Data sources: every kind yields the same records, each with a canonical user id."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from sqlalchemy import Engine

from fl_client.tasks import get_task
from fl_client.tasks.data_sources import (
    CsvSource,
    InMemorySource,
    ParquetSource,
    SqlSource,
    SyntheticSource,
    filter_by_consent,
    source_from_config,
    write_csv,
)
from schema.errors import ConfigurationError, InvalidInputError
from simulations.synthetic import tenant_records
from tests.fl_client.conftest import firm_records


def _assert_same_encoding(task: str, got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    spec = get_task(task)
    got_x, got_y = spec.encode(got)
    exp_x, exp_y = spec.encode(expected)
    assert torch.equal(got_x, exp_x)
    assert torch.equal(got_y, exp_y)
    assert [r["user_id"] for r in got] == [r["user_id"] for r in expected]


@pytest.mark.parametrize("task", ["time_estimation", "document_templates", "compliance_checks"])
def test_csv_round_trip(task: str, tmp_path: Path) -> None:
    # Prepare
    records = firm_records(task, n=30)
    path = tmp_path / f"{task}.csv"
    write_csv(path, records)

    # Execute
    read = list(CsvSource(path))

    # Assert
    _assert_same_encoding(task, read, records)


def test_sql_query_round_trip(engine: Engine) -> None:
    # Prepare: a tenant's own table (not part of our schema), read through a query.
    records = firm_records("time_estimation", n=25)
    table = sa.Table(
        "tenant_task_hours",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String(36)),
        sa.Column("service", sa.String(40)),
        sa.Column("staff_level", sa.String(20)),
        sa.Column("client_size", sa.String(20)),
        sa.Column("documents", sa.Integer),
        sa.Column("complexity", sa.Integer),
        sa.Column("recurring", sa.Boolean),
        sa.Column("month", sa.Integer),
        sa.Column("hours", sa.Float),
    )
    table.create(engine)
    with engine.begin() as connection:
        connection.execute(
            table.insert(),
            [{**{k: v for k, v in r.items() if k != "user_id"}, "owner": r["user_id"]} for r in records],
        )
    query = (
        "SELECT owner AS user_id, service, staff_level, client_size, documents, complexity, recurring, month, hours "
        "FROM tenant_task_hours WHERE hours >= :min_hours ORDER BY id"
    )

    # Execute
    read = list(SqlSource(engine, query, {"min_hours": 0}))

    # Assert
    _assert_same_encoding("time_estimation", read, records)


def test_bad_sql_query_is_an_invalid_input(engine: Engine) -> None:
    # Execute / Assert
    with pytest.raises(InvalidInputError, match="data query failed"):
        list(SqlSource(engine, "SELECT user_id FROM no_such_table"))


def test_parquet_without_pyarrow_says_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)

    # Execute / Assert
    with pytest.raises(ConfigurationError, match="pip install pyarrow"):
        list(ParquetSource(tmp_path / "hours.parquet"))


def test_parquet_round_trip(tmp_path: Path) -> None:
    # Prepare
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is optional")
    import pyarrow as pa

    records = firm_records("compliance_checks", n=20)
    path = tmp_path / "findings.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)

    # Execute
    read = list(ParquetSource(path, batch_size=7))

    # Assert
    _assert_same_encoding("compliance_checks", read, records)


def test_synthetic_source_is_the_generator_lazily() -> None:
    # Prepare
    source = SyntheticSource("document_templates", seed=3, tenant_index=2, n_records=15)

    # Execute
    first, again = list(source), list(source)

    # Assert
    assert first == again == tenant_records("document_templates", seed=3, tenant_index=2, n_records=15)


def test_every_record_needs_a_uuid_user_id() -> None:
    # Prepare
    record = firm_records("digits", n=1)[0]
    no_user = {k: v for k, v in record.items() if k != "user_id"}
    bad_user = {**record, "user_id": "alice"}

    # Execute / Assert
    with pytest.raises(InvalidInputError, match="user_id"):
        list(InMemorySource([no_user]))
    with pytest.raises(InvalidInputError, match="not a UUID"):
        list(InMemorySource([bad_user]))


def test_consent_filter_compares_canonical_ids() -> None:
    # Prepare
    alice, bob = uuid.uuid4(), uuid.uuid4()
    records = [
        {"user_id": str(alice).upper(), "x": 1},
        {"user_id": alice.hex, "x": 2},
        {"user_id": str(bob), "x": 3},
    ]

    # Execute
    kept = filter_by_consent(records, {str(alice)})
    by_uuid = InMemorySource(records).consented([alice.hex])

    # Assert
    assert [r["x"] for r in kept] == [1, 2]
    assert {r["user_id"] for r in kept} == {str(alice)}
    assert kept == by_uuid


def test_source_from_node_config(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "hours.csv"
    write_csv(path, firm_records("time_estimation", n=3))

    # Execute
    csv_source = source_from_config({"data-source": "csv", "data-path": str(path)}, "time_estimation")
    synthetic = source_from_config(
        {"data-source": "synthetic", "tenant-index": 1, "data-seed": 4}, "compliance_checks"
    )

    # Assert
    assert isinstance(csv_source, CsvSource) and len(list(csv_source)) == 3
    assert isinstance(synthetic, SyntheticSource) and synthetic.tenant_index == 1 and synthetic.seed == 4
    with pytest.raises(ConfigurationError, match="data-path"):
        source_from_config({"data-source": "csv"}, "time_estimation")
    with pytest.raises(ConfigurationError, match="known: csv, parquet, sql, synthetic"):
        source_from_config({"data-source": "ftp"}, "time_estimation")


def test_missing_csv_file_is_an_invalid_input(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(InvalidInputError, match="no such file"):
        list(CsvSource(tmp_path / "absent.csv"))
