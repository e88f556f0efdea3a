"""All migrations on an empty database of each backend; the result must equal the models."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine
from sqlalchemy.schema import CreateIndex

from schema import migrate
from schema.base import Base
from schema.errors import SchemaNotReadyError
from schema.models import SPEC_TABLES, load_all
from schema.vocab import AGENT_ROUTING_SEED

load_all()  # the drift test compares every model with the migrations

REFERENCED_TABLES = {
    "organizations",
    "users",
    "workspaces",
    "sessions",
    "agentSessions",
    "trustedDevices",
    "invoices",
}


def _drift(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def _index_definitions(engine: Engine) -> dict[str, str]:
    """Each index's DDL as the database reports it, normalized for comparison."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            ).all()
        else:
            rows = connection.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            ).all()
    return {name: _normalize_index_sql(sql) for name, sql in rows}


def _normalize_index_sql(sql: str) -> str:
    text = sql.lower().replace('"', "")
    text = re.sub(r"\s+on\s+[\w.]+\.(\w+)", r" on \1", text)  # drop the schema prefix
    text = text.replace(" using btree", "")
    text = re.sub(r"[()]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def test_upgrade_on_empty_database_reaches_head_and_creates_every_table(empty_engine: Engine) -> None:
    # Prepare
    assert migrate.current_revision(empty_engine) is None

    # Execute
    migrate.upgrade(empty_engine)

    # Assert
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    tables = set(sa.inspect(empty_engine).get_table_names())
    assert set(SPEC_TABLES) <= tables
    assert tables >= REFERENCED_TABLES
    assert len(SPEC_TABLES) == 17


def test_migrated_schema_has_no_drift_from_the_models(engine: Engine) -> None:
    assert _drift(engine) == []


def test_every_model_index_exists_with_the_same_definition(engine: Engine) -> None:
    # Prepare: what the models would create, compiled for this backend.
    expected = {
        index.name: _normalize_index_sql(str(CreateIndex(index).compile(dialect=engine.dialect)))
        for table in Base.metadata.sorted_tables
        for index in table.indexes
    }

    # Execute
    actual = _index_definitions(engine)

    # Assert: every index, partial ones with their WHERE, descending columns with DESC.
    missing = set(expected) - set(actual)
    assert not missing
    for name, ddl in expected.items():
        assert actual[name] == ddl, name
    assert "where is_fallback" in actual["idx_llm_usage_fallback"]
    assert "created_at desc" in actual["idx_vamn_inference_org"]


def test_agent_routing_is_seeded_with_the_twelve_agents(engine: Engine) -> None:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                sa.column("agent_slug"),
                sa.column("primary_head"),
                sa.column(
                    "secondary_heads", Base.metadata.tables["agent_vamn_routing"].c.secondary_heads.type
                ),
                sa.column("routing_rules", Base.metadata.tables["agent_vamn_routing"].c.routing_rules.type),
            ).select_from(sa.table("agent_vamn_routing"))
        ).all()
    seeded = {row[0]: (row[1], row[2], row[3]) for row in rows}
    assert seeded == {slug: (head, secondary, rules) for slug, head, secondary, rules in AGENT_ROUTING_SEED}


def test_downgrade_to_base_then_upgrade_again(engine: Engine) -> None:
    # Execute
    migrate.downgrade(engine, "base")

    # Assert: nothing of ours is left but Alembic's bookkeeping.
    assert migrate.current_revision(engine) is None
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}

    # Execute again: the cycle is repeatable and lands on the same schema.
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert _drift(engine) == []
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM agent_vamn_routing").scalar() == 12


def test_require_current_schema_refuses_an_unmigrated_database(empty_engine: Engine) -> None:
    with pytest.raises(SchemaNotReadyError, match="run `accute-fl db upgrade`"):
        migrate.require_current_schema(empty_engine)
    migrate.upgrade(empty_engine)
    migrate.require_current_schema(empty_engine)


def test_the_scanned_head_is_alembics_head() -> None:
    """Commands read the head from the revision files' assignment lines, without Alembic; it must be
    the head Alembic itself would upgrade to."""
    from alembic.script import ScriptDirectory

    assert migrate.scanned_head() == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
