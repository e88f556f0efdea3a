"""Migration 0019 on a database at 0018 holding duplicate indicators (what two imports racing each
other could leave): one row per (type, value, source) survives, and the database refuses another."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from schema import migrate
from schema.models import ThreatIntelligence

#: The table as the models define it (0018 and 0019 differ by the index only); through its column
#: types, so each backend stores times and numbers the way the application does.
TABLE = ThreatIntelligence.__table__


def day(n: int) -> datetime:
    return datetime(2026, 1, n, tzinfo=UTC)


def row(
    kind: str, value: str, source: str, confidence: str, first: int, last: int, threat: str
) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "indicator_type": kind,
        "indicator_value": value,
        "threat_type": threat,
        "severity": "high",
        "source": source,
        "confidence": Decimal(confidence),
        "first_seen": day(first),
        "last_seen": day(last),
        "is_active": True,
    }


def insert(engine: Engine, rows: list[dict[str, object]]) -> None:
    with engine.begin() as connection:
        for values in rows:
            connection.execute(TABLE.insert(), values)


def indicators(engine: Engine) -> list[tuple[object, ...]]:
    c = TABLE.c
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                c.indicator_type,
                c.indicator_value,
                c.source,
                c.threat_type,
                c.confidence,
                c.first_seen,
                c.last_seen,
            )
        ).all()
    ordered = sorted(rows, key=lambda r: (r[0] != "ip", r[1], r[2]))
    return [
        (r[0], r[1], r[2], r[3], Decimal(str(r[4])), r[5].date().isoformat(), r[6].date().isoformat())
        for r in ordered
    ]


def test_upgrade_merges_duplicates_and_then_refuses_one_downgrade_allows_it_again(
    empty_engine: Engine,
) -> None:
    # Prepare: at 0018, three reports of one indicator by one feed, a tie on last_seen broken by
    # confidence in a second group, and the same value from another feed (not a duplicate).
    migrate.upgrade(empty_engine, "0018")
    insert(
        empty_engine,
        [
            row("ip", "203.0.113.9", "feed-a", "60", 5, 10, "old"),
            row("ip", "203.0.113.9", "feed-a", "90", 2, 20, "newest"),
            row("ip", "203.0.113.9", "feed-a", "99", 8, 15, "middle"),
            row("ip", "203.0.113.9", "feed-b", "50", 3, 4, "other feed"),
            row("domain", "evil.example", "feed-a", "40", 6, 9, "less sure"),
            row("domain", "evil.example", "feed-a", "80", 7, 9, "surer"),
        ],
    )

    # Execute
    migrate.upgrade(empty_engine, "0019")

    # Assert: per key the latest last_seen (then the highest confidence) survives, first_seen the
    # group's earliest; the other feed's row is untouched.
    assert indicators(empty_engine) == [
        ("ip", "203.0.113.9", "feed-a", "newest", Decimal("90"), "2026-01-02", "2026-01-20"),
        ("ip", "203.0.113.9", "feed-b", "other feed", Decimal("50"), "2026-01-03", "2026-01-04"),
        ("domain", "evil.example", "feed-a", "surer", Decimal("80"), "2026-01-06", "2026-01-09"),
    ]
    with pytest.raises(IntegrityError):
        insert(empty_engine, [row("ip", "203.0.113.9", "feed-a", "10", 1, 1, "again")])

    # Execute: downgrade
    migrate.downgrade(empty_engine, "0018")

    # Assert: the index is gone (a duplicate goes in again), and upgrading once more merges it.
    insert(empty_engine, [row("ip", "203.0.113.9", "feed-a", "10", 1, 1, "again")])
    assert len(indicators(empty_engine)) == 4
    migrate.upgrade(empty_engine)
    assert len(indicators(empty_engine)) == 3
    assert indicators(empty_engine)[0][5] == "2026-01-01"  # the re-added report widened first_seen
