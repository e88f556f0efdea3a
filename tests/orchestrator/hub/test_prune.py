"""Pruning the outbox: only acknowledged (published) events past the age go; pending and dead stay."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from orchestrator.hub import store
from schema.errors import InvalidInputError
from tests.orchestrator.hub.support import age_events, append_events, remaining_event_ids, statuses


def test_prune_deletes_only_old_published_events_in_batches(engine: Engine) -> None:
    # Prepare: 7 old published, 2 recent published, 2 old-looking dead, 2 pending.
    ids = append_events(engine, [uuid.uuid4()], per_tenant=13)
    old, recent, dead, pending = ids[:7], ids[7:9], ids[9:11], ids[11:]
    age_events(engine, old, "published", 30)
    age_events(engine, recent, "published", 1)
    age_events(engine, dead, "dead", 30)
    seen: list[int] = []

    # Execute: batches of 3, so the loop runs 3 times for 7 rows.
    deleted = store.prune(engine, older_than=timedelta(days=7), batch=3, progress=seen.append)

    # Assert
    assert deleted == 7 and seen == [3, 6, 7]
    assert remaining_event_ids(engine) == set(recent) | set(dead) | set(pending)
    assert statuses(engine) == {"published": 2, "dead": 2, "pending": 2}
    assert store.prune(engine, older_than=timedelta(days=7)) == 0


def test_prune_refuses_a_negativeage_events(engine: Engine) -> None:
    with pytest.raises(InvalidInputError, match="negative"):
        store.prune(engine, older_than=timedelta(days=-1))
