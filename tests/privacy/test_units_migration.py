"""Migration 0006 on a ledger written before units existed: every event and budget gets its unit."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from privacy import accounting, ledger
from privacy.events import CentralDpEvent, DpSgdEvent
from privacy.ledger import LedgerPolicy
from schema import migrate
from schema.db import transaction


def test_0006_gives_old_events_their_unit_and_splits_a_mixed_budget(empty_engine: Engine) -> None:
    # Prepare: a 0005 database whose ledger mixed record-level DP-SGD and tenant-level central DP.
    migrate.upgrade(empty_engine, "0005")
    org = uuid.uuid4()
    with empty_engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO organizations (id, name) VALUES (:id, 'old-firm')"),
            {"id": org if empty_engine.dialect.name == "postgresql" else org.hex},
        )
    oid = org if empty_engine.dialect.name == "postgresql" else org.hex
    with empty_engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO privacy_budgets (id, organization_id, model_type, epsilon_cap, delta, event_count) "
                "VALUES (:id, :o, 'm', 5.0, 1e-6, 2)"
            ),
            {"id": uuid.uuid4() if empty_engine.dialect.name == "postgresql" else uuid.uuid4().hex, "o": oid},
        )
        for mechanism, z, q, steps, clip in (
            ("dp_sgd", 1.1, 0.01, 100, None),
            ("central_gaussian", 3.0, 0.5, 1, 1.0),
        ):
            connection.execute(
                sa.text(
                    "INSERT INTO privacy_ledger_events (organization_id, model_type, mechanism, noise_multiplier, "
                    "sample_rate, steps, clip_norm, aggregation_round) VALUES (:o, 'm', :mech, :z, :q, :t, :c, 1)"
                ),
                {"o": oid, "mech": mechanism, "z": z, "q": q, "t": steps, "c": clip},
            )

    # Execute
    migrate.upgrade(empty_engine)

    # Assert: units assigned, one budget per unit with the old cap, each unit's epsilon its own.
    policy = LedgerPolicy()
    with transaction(empty_engine) as session:
        rows = {r.unit: r for r in ledger.budget_rows(session, org, policy=policy)}
        history = ledger.history(session, org, "m", policy=policy)
    assert [h.unit for h in history] == ["record", "tenant"]
    assert set(rows) == {"record", "tenant"}
    assert all((r.epsilon_cap, r.delta, r.events) == (5.0, 1e-6, 1) for r in rows.values())
    assert rows["record"].epsilon_spent == pytest.approx(
        accounting.epsilon([DpSgdEvent(1.1, 0.01, 100)], 1e-6)
    )
    assert rows["tenant"].epsilon_spent == pytest.approx(
        accounting.epsilon([CentralDpEvent(3.0, 0.5, 1, 1.0)], 1e-6)
    )

    # And back: the downgrade keeps the record ledger.
    migrate.downgrade(empty_engine, "0005")
    with empty_engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM privacy_budgets")) == 1
        assert connection.scalar(sa.text("SELECT count(*) FROM privacy_ledger_events")) == 2
