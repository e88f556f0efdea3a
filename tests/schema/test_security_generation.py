"""The security generation moves when a block is raised or a blocking anomaly resolved, and only
then (SQLite and PostgreSQL): what every worker's ``BlockSync`` polls."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from schema import security_anomalies, security_generation
from schema.db import transaction
from schema.security_anomalies import Finding
from schema.timeutil import utcnow


def _generation(engine: Engine) -> int:
    with transaction(engine) as session:
        return security_generation.current(session)


def test_blocks_and_their_resolution_bump_the_generation_other_findings_do_not(engine: Engine) -> None:
    # Prepare
    start = _generation(engine)
    since = utcnow() - timedelta(seconds=1)

    # Execute: a finding without a block, one with, and the blocking one resolved.
    with transaction(engine) as session:
        security_anomalies.record(
            session, Finding("time_anomaly", "time_anomaly", "low", "org:x", evidence={"hour_utc": 3})
        )
    after_plain = _generation(engine)
    with transaction(engine) as session:
        row, _ = security_anomalies.record(
            session,
            Finding("credential_stuffing", "credential_stuffing", "high", "address:127.0.0.9", block_s=900),
        )
        blocking_id = row.id
    after_block = _generation(engine)
    with transaction(engine) as session:
        security_anomalies.resolve(session, blocking_id, None, resolution="false_positive", reviewer="t")
    after_resolve = _generation(engine)
    with transaction(engine) as session:
        resolved = security_generation.resolved_subjects(session, since)

    # Assert
    assert (after_plain, after_block, after_resolve) == (start, start + 1, start + 2)
    assert list(resolved) == ["address:127.0.0.9"]
