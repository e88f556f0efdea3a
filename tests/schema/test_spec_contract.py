"""The migrated database matches the spec's SQL column by column, on each backend.

PostgreSQL must match the spec's types and defaults exactly; SQLite must match them through the
portable mapping documented in schema/types.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.schema.spec_contract import SpecColumn, spec_indexes, spec_seed_slugs, spec_tables

PG_TYPES = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE", "BIGSERIAL": "BIGINT"}
SQLITE_TYPES = {
    "UUID": "CHAR(32)",
    "TIMESTAMPTZ": "DATETIME",
    "TEXT[]": "JSON",
    "JSONB": "JSON",
    "INET": "VARCHAR(45)",
    "BYTEA": "BLOB",
    "BIGSERIAL": "INTEGER",
}
SQLITE_DEFAULTS = {
    "now()": "current_timestamp",
    "true": "1",
    "false": "0",
    "gen_random_uuid()": "lower(hex(randomblob(16)))",
}


def expected_type(column: SpecColumn, dialect: str) -> str:
    spec_type = re.sub(r"DECIMAL\((\d+),(\d+)\)", r"NUMERIC(\1, \2)", column.type)
    mapping = PG_TYPES if dialect == "postgresql" else SQLITE_TYPES
    return mapping.get(spec_type, spec_type)


def expected_default(column: SpecColumn, dialect: str) -> str | None:
    if column.default is None:
        return None
    value = column.default.lower()
    return SQLITE_DEFAULTS.get(value, value) if dialect == "sqlite" else value


def normalize_default(raw: str | None) -> str | None:
    if raw is None:
        return None
    text = re.sub(r"::[a-z ]+(\[\])?", "", raw.lower())  # PostgreSQL casts: 'x'::character varying
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    return text.strip()


def reflected(engine: Engine, table: str) -> dict[str, Any]:
    inspector = sa.inspect(engine)
    return {
        "columns": inspector.get_columns(table),
        "fks": inspector.get_foreign_keys(table),
        "uniques": inspector.get_unique_constraints(table),
        "checks": inspector.get_check_constraints(table),
        "indexes": inspector.get_indexes(table),
    }


#: Columns we add to a spec table, after all of the spec's own (which stay exactly as written).
#: Each one is documented where it is defined.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    # The month's exact sum (12 decimals) behind the spec's rounded total_cost_usd: money is
    # rounded once per invoice line (orchestrator/accounting.py), never per request.
    "fallback_billing": ("total_cost_exact_usd",),
    # What the switch does when it fires (orchestrator/security/dead_man_switch.py ACTIONS): the
    # spec names the actions in prose only (issue 14, migration 0016).
    "dead_man_switch_config": ("actions",),
}


#: Indexes we add to a spec table (name: table, columns, unique), each documented in its migration.
INDEX_EXTENSIONS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    # One config per organization (migration 0016).
    "uq_dms_config_org": ("dead_man_switch_config", ("organization_id",), True),
    # One row per indicator and feed; `threat import` upserts on it (migration 0019).
    "uq_threat_indicator_source": (
        "threat_intelligence",
        ("indicator_type", "indicator_value", "source"),
        True,
    ),
}


@pytest.mark.parametrize("table_name", sorted(spec_tables()))
def test_table_matches_spec(engine: Engine, table_name: str) -> None:
    # Prepare
    spec = spec_tables()[table_name]
    dialect = engine.dialect.name

    # Execute
    actual = reflected(engine, table_name)

    # Assert: the same columns in the spec's order (documented extensions only after them).
    columns = {c["name"]: c for c in actual["columns"]}
    extensions = EXTENSIONS.get(table_name, ())
    assert [c["name"] for c in actual["columns"]] == [c.name for c in spec.columns] + list(extensions)
    for column in spec.columns:
        got = columns[column.name]
        where = f"{table_name}.{column.name}"
        assert got["type"].compile(dialect=engine.dialect) == expected_type(column, dialect), where
        assert got["nullable"] == column.nullable, where
        if column.type == "BIGSERIAL":
            assert got.get("autoincrement", True) in (True, "auto"), where
        else:
            assert normalize_default(got["default"]) == expected_default(column, dialect), where
        if column.generated:
            assert got.get("computed") is not None, where
            assert got["computed"]["sqltext"].replace("(", "").replace(")", "") == column.generated, where

    # Assert: foreign keys point where the spec says.
    fks = {tuple(fk["constrained_columns"]): fk["referred_table"] for fk in actual["fks"]}
    assert fks == {(c.name,): c.references for c in spec.columns if c.references}

    # Assert: the same UNIQUE column sets.
    spec_uniques = {frozenset(u) for u in spec.uniques} | {
        frozenset([c.name]) for c in spec.columns if c.unique
    }
    assert {frozenset(u["column_names"]) for u in actual["uniques"]} == spec_uniques

    # Assert: each CHECK allows exactly the spec's values, in the spec's order.
    spec_checks = {c.name: c.check_values for c in spec.columns if c.check_values}
    got_checks: dict[str, list[str]] = {}
    for check in actual["checks"]:
        column_name = next(c.name for c in spec.columns if re.search(rf"\b{c.name}\b", check["sqltext"]))
        got_checks[column_name] = re.findall(r"'([^']*)'", check["sqltext"])
    assert got_checks == spec_checks


@pytest.mark.parametrize("index_name", sorted(spec_indexes()))
def test_index_matches_spec(engine: Engine, index_name: str) -> None:
    spec = spec_indexes()[index_name]
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            ddl = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (index_name,)
            ).scalar()
        else:
            ddl = connection.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = %s",
                (index_name,),
            ).scalar()
    assert ddl is not None, f"{index_name} is missing"
    match = re.search(
        r"ON\s+(?:\w+\.)?\"?(\w+)\"?\s*(?:USING btree\s*)?\((.*?)\)(?:\s+WHERE\s+(.*))?$", ddl, re.S
    )
    assert match is not None, ddl
    assert match.group(1) == spec.table
    assert [" ".join(c.split()).lower() for c in match.group(2).split(",")] == spec.columns
    if spec.where is None:
        assert match.group(3) is None
    else:
        expected_where = spec.where.strip().lower()
        if engine.dialect.name == "sqlite":
            expected_where = expected_where.replace("= true", "= 1")
        assert match.group(3).strip("() ").lower() == expected_where


@pytest.mark.parametrize("index_name", sorted(INDEX_EXTENSIONS))
def test_extension_index_exists_as_documented(engine: Engine, index_name: str) -> None:
    # Prepare
    table, columns, unique = INDEX_EXTENSIONS[index_name]

    # Execute
    found = {i["name"]: i for i in sa.inspect(engine).get_indexes(table)}

    # Assert
    assert index_name in found, f"{index_name} is missing on {table}"
    assert tuple(found[index_name]["column_names"]) == columns
    assert bool(found[index_name]["unique"]) is unique


def test_every_spec_table_and_index_is_in_the_contract() -> None:
    # The parser must see all 17 tables and 27 indexes of the spec, else the tests above prove less.
    assert len(spec_tables()) == 17
    assert len(spec_indexes()) == 27
    assert len(spec_seed_slugs()) == 12


def test_seed_matches_spec_slugs(engine: Engine) -> None:
    with engine.connect() as connection:
        slugs = {row[0] for row in connection.exec_driver_sql("SELECT agent_slug FROM agent_vamn_routing")}
    assert slugs == set(spec_seed_slugs())
