"""CHECKs, UNIQUEs, foreign keys and the generated column hold on both backends."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from schema.base import Base
from schema.models import SPEC_TABLES, load_all
from tests.schema.rows import VALID_ROWS, insert, make_refs, table

load_all()

# The spec's CHECK lists (tables added beyond the spec test their own CHECKs with their features).
# Sorted: `Table.constraints` is a set, and pytest-xdist workers must collect in one order.
CHECKED_COLUMNS = sorted(
    (t.name, constraint.name.removeprefix(f"ck_{t.name}_"))
    for t in Base.metadata.sorted_tables
    if t.name in SPEC_TABLES or t.name == "organizations"
    for constraint in t.constraints
    if isinstance(constraint, sa.CheckConstraint)
)


def allowed_values(table_name: str, column: str) -> list[str]:
    constraint = next(
        c
        for c in table(table_name).constraints
        if isinstance(c, sa.CheckConstraint) and c.name.endswith(column)
    )
    return re.findall(r"'([^']*)'", str(constraint.sqltext))


def attempt(engine: Engine, table_name: str, **overrides: Any) -> None:
    """Insert one otherwise-valid row in its own transaction."""
    with engine.begin() as connection:
        refs = make_refs(connection)
    with engine.begin() as connection:
        insert(connection, table_name, {**VALID_ROWS[table_name](refs), **overrides})


def test_every_spec_table_has_a_valid_row_builder() -> None:
    assert set(SPEC_TABLES) <= set(VALID_ROWS)


@pytest.mark.parametrize("table_name", sorted(VALID_ROWS))
def test_valid_row_is_accepted(engine: Engine, table_name: str) -> None:
    attempt(engine, table_name)
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(table(table_name))).scalar() >= 1


@pytest.mark.parametrize(("table_name", "column"), CHECKED_COLUMNS)
def test_check_accepts_each_listed_value_and_rejects_others(
    engine: Engine, table_name: str, column: str
) -> None:
    # Prepare
    values = allowed_values(table_name, column)
    assert values

    # Execute / Assert: every listed value is accepted ...
    for value in values:
        attempt(engine, table_name, **{column: value})

    # ... and one outside the list is refused.
    with pytest.raises(IntegrityError):
        attempt(engine, table_name, **{column: "not_an_allowed_value"})


def test_checked_columns_cover_every_check_of_the_spec() -> None:
    assert len(CHECKED_COLUMNS) == 15  # 14 from the spec's tables + organizations.billing_model


UNIQUE_CASES = {
    "agent_vamn_routing (agent_slug)": ("agent_vamn_routing", {"agent_slug": "dup-agent"}),
    "user_consents (org, user, type)": ("user_consents", {"consent_type": "ai_training"}),
    "vamn_model_registry (name, version, head)": (
        "vamn_model_registry",
        {"model_name": "dup", "model_version": "1"},
    ),
    "tenant_llm_config (org, provider, model)": ("tenant_llm_config", {"model_id": "gpt-dup"}),
    "fallback_billing (org, period)": (
        "fallback_billing",
        {"billing_period_start": "2026-01-01", "billing_period_end": "2026-02-01"},
    ),
}


@pytest.mark.parametrize("case", sorted(UNIQUE_CASES))
def test_unique_constraint_refuses_a_duplicate(engine: Engine, case: str) -> None:
    table_name, fixed = UNIQUE_CASES[case]
    fixed = {k: dt.date.fromisoformat(v) if k.startswith("billing_period") else v for k, v in fixed.items()}
    with engine.begin() as connection:
        refs = make_refs(connection)
    row = {**VALID_ROWS[table_name](refs), **fixed}
    with engine.begin() as connection:
        insert(connection, table_name, row)
    with pytest.raises(IntegrityError), engine.begin() as connection:
        insert(connection, table_name, {**VALID_ROWS[table_name](refs), **fixed})


@pytest.mark.parametrize(
    ("table_name", "column"),
    [
        ("users", "organization_id"),
        ("user_consents", "user_id"),
        ("federated_learning_contributions", "organization_id"),
        ("llm_usage_log", "session_id"),
        ("zero_trust_access_log", "device_id"),
    ],
)
def test_foreign_keys_are_enforced(engine: Engine, table_name: str, column: str) -> None:
    if table_name == "users":
        with pytest.raises(IntegrityError), engine.begin() as connection:
            insert(connection, "users", {"organization_id": uuid.uuid4(), "email": "x@example.com"})
        return
    with pytest.raises(IntegrityError):
        attempt(engine, table_name, **{column: uuid.uuid4()})


def test_total_tokens_is_generated_from_input_and_output(engine: Engine) -> None:
    attempt(engine, "llm_usage_log", input_tokens=1200, output_tokens=345)
    with engine.connect() as connection:
        total = connection.execute(sa.select(table("llm_usage_log").c.total_tokens)).scalar()
    assert total == 1545


def test_server_defaults_fill_omitted_columns(engine: Engine) -> None:
    attempt(engine, "tenant_llm_config")
    with engine.connect() as connection:
        row = connection.execute(sa.select(table("tenant_llm_config"))).mappings().one()
    assert row["priority"] == 1
    assert row["is_active"] is True
    assert row["rate_limit_rpm"] == 60
    assert row["rate_limit_tpm"] == 100000
    assert row["max_tokens"] == 4096
    assert float(row["temperature"]) == pytest.approx(0.7)
    assert row["config_json"] == {}
    assert row["health_status"] == "unknown"
    assert row["created_at"] is not None
    assert isinstance(row["id"], uuid.UUID)


def test_raw_sql_insert_gets_a_server_generated_uuid(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO agent_vamn_routing (agent_slug, primary_head) VALUES ('raw-sql', 'citation')"
        )
    with engine.connect() as connection:
        value = connection.execute(
            sa.select(table("agent_vamn_routing").c.id).where(
                table("agent_vamn_routing").c.agent_slug == "raw-sql"
            )
        ).scalar()
    assert isinstance(value, uuid.UUID)
