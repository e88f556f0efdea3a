"""Threat feeds into ``threat_intelligence``: STIX 2.1 and CSV, idempotent, expiry, reload."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from orchestrator.security import threat_intel
from orchestrator.security.threat_index import ThreatIntel
from schema.db import transaction
from schema.errors import InvalidInputError
from schema.models import ThreatIntelligence
from tests.orchestrator.security.stix_fixtures import bundle_json

CSV = (
    "indicator_type,indicator_value,threat_type,severity,source,confidence,first_seen,last_seen\n"
    "ip,203.0.113.9,botnet,high,abuse-feed,80,2026-01-01T00:00:00Z,2026-02-01T00:00:00Z\n"
    "ip,10.9.0.0/16,scanner,medium,abuse-feed,55,,\n"
    "domain,Bad.Example.,phishing,critical,abuse-feed,99.5,2026-01-01T00:00:00Z,\n"
)


def snapshot(engine: Engine) -> list[tuple[object, ...]]:
    with transaction(engine) as session:
        rows = session.scalars(select(ThreatIntelligence).order_by(ThreatIntelligence.indicator_value))
        return [
            (
                r.id,
                r.indicator_type,
                r.indicator_value,
                r.source,
                r.severity,
                str(r.confidence),
                r.first_seen,
                r.last_seen,
                r.is_active,
                r.updated_at,
                r.metadata_,
            )
            for r in rows
        ]


def test_stix_bundle_maps_indicators() -> None:
    # Execute
    found = {(i.indicator_type, i.indicator_value): i for i in threat_intel.parse_stix(bundle_json())}

    # Assert: every equality of every pattern, normalised, with the feed's identity as source.
    assert set(found) == {
        ("ip", "127.0.0.5"),
        ("ip", "192.0.2.0/24"),
        ("user_agent", "EvilBot/6.6"),
        ("domain", "evil-llm.example"),
        ("url", "https://paste.example/raw/x"),
        ("hash", "ef" * 32),
        ("ip", "198.51.100.77"),
    }
    assert {i.source for i in found.values()} == {"ACME CTI"}
    assert found[("ip", "127.0.0.5")].severity == "high"
    assert found[("user_agent", "EvilBot/6.6")].severity == "medium"
    assert found[("ip", "198.51.100.77")].is_active is False


def test_stix_bundle_imported_twice_changes_nothing(engine: Engine) -> None:
    # Prepare
    text = bundle_json()
    with transaction(engine) as session:
        first = threat_intel.import_indicators(session, threat_intel.parse_file("feed.json", text))
    before = snapshot(engine)

    # Execute
    with transaction(engine) as session:
        second = threat_intel.import_indicators(session, threat_intel.parse_file("feed.json", text))

    # Assert
    assert (first.inserted, first.updated) == (7, 0)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 7)
    assert snapshot(engine) == before


def test_csv_import_normalises_and_updates_by_type_value_source(engine: Engine) -> None:
    # Prepare
    with transaction(engine) as session:
        threat_intel.import_indicators(session, threat_intel.parse_csv(CSV))
    newer = CSV.replace("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z").replace(",high,", ",critical,")

    # Execute
    with transaction(engine) as session:
        result = threat_intel.import_indicators(session, threat_intel.parse_csv(newer))
        listed = threat_intel.list_indicators(session, "ip")

    # Assert: one row per (type, value, source); the known one updated, nothing else.
    assert (result.inserted, result.updated) == (0, 1)
    assert len(snapshot(engine)) == 3
    by_value = {r["indicator_value"]: r for r in listed}
    assert by_value["203.0.113.9"]["severity"] == "critical"
    assert by_value["203.0.113.9"]["last_seen"].startswith("2026-03-01")
    assert "10.9.0.0/16" in by_value
    assert {r[2] for r in snapshot(engine)} >= {"bad.example"}


def test_two_imports_racing_insert_each_indicator_once(pg_engine: Engine) -> None:
    # Prepare: the first import has inserted every row but not committed when the second starts,
    # so the second sees none of them known (its read precedes the first's commit).
    engine = pg_engine
    first_inserted = threading.Event()
    first_may_commit = threading.Event()
    outcome: dict[str, threat_intel.ImportResult] = {}

    def first() -> None:
        with transaction(engine) as session:
            outcome["first"] = threat_intel.import_indicators(session, threat_intel.parse_csv(CSV))
            first_inserted.set()
            first_may_commit.wait(30)

    racer = threading.Thread(target=first)
    racer.start()
    assert first_inserted.wait(30)

    # Execute: the second import's INSERT waits on the first's uncommitted rows, which then commit.
    threading.Timer(0.5, first_may_commit.set).start()
    with transaction(engine) as session:
        outcome["second"] = threat_intel.import_indicators(session, threat_intel.parse_csv(CSV))
    racer.join(30)

    # Assert: no error, no duplicate; the second found all three known and changed none of them.
    assert (outcome["first"].inserted, outcome["first"].updated) == (3, 0)
    assert (outcome["second"].inserted, outcome["second"].updated, outcome["second"].unchanged) == (0, 0, 3)
    assert len(snapshot(engine)) == 3


def test_a_file_repeating_an_indicator_and_imported_twice_keeps_one_row_each(engine: Engine) -> None:
    # Prepare: the same indicator three times in one file (once with other letter case).
    text = (
        CSV
        + "ip,203.0.113.9,botnet,high,abuse-feed,80,,\n"
        + "DOMAIN,bad.EXAMPLE,phishing,critical,abuse-feed,99.5,,\n"
    )

    # Execute
    with transaction(engine) as session:
        first = threat_intel.import_indicators(session, threat_intel.parse_csv(text))
    before = snapshot(engine)
    with transaction(engine) as session:
        second = threat_intel.import_indicators(session, threat_intel.parse_csv(text))

    # Assert
    assert (first.read, first.inserted) == (3, 3)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 3)
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("indicator_type,indicator_value\nip,1.2.3.4\n", "header lacks"),
        (CSV.replace("ip,203.0.113.9", "ip,999.1.1.1"), "line 2"),
        (CSV.replace(",high,", ",severe,"), "severity"),
        (CSV.replace(",80,", ",180,"), "confidence"),
    ],
)
def test_bad_csv_is_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        list(threat_intel.parse_csv(text))


def test_expiry_deactivates_and_the_index_reloads_only_on_change(engine: Engine) -> None:
    # Prepare
    with transaction(engine) as session:
        threat_intel.import_indicators(session, threat_intel.parse_csv(CSV))
    intel = ThreatIntel()
    assert intel.refresh(engine) is True
    assert intel.index.match_ip("203.0.113.9") is not None
    assert intel.refresh(engine) is False  # nothing changed: no reload

    # Execute: last seen 2026-02-01; expire everything older than 10 days from 2026-06-01.
    with transaction(engine) as session:
        expired = threat_intel.expire(session, timedelta(days=10), now=datetime(2026, 6, 1, tzinfo=UTC))

    # Assert
    assert expired == 1  # last seen 2026-02-01; the two undated ones were last seen at import
    assert intel.refresh(engine) is True
    assert intel.index.match_ip("203.0.113.9") is None
    assert intel.index.match_ip("10.9.1.1") is not None
