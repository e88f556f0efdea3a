"""File hashes in threat intelligence: listed weights are neither activated nor served."""

from __future__ import annotations

import numpy as np
from sqlalchemy import Engine

from aggregation.weights_store import WeightsStore
from fl_server.config import RunConfig
from fl_server.publish import publish_run
from orchestrator.security import threat_intel
from schema import registry
from schema.db import transaction
from schema.models import FlRun
from tests.orchestrator.conftest import Service
from tests.orchestrator.fakes import FakeProvider


def _list_hash(engine: Engine, digest: str) -> None:
    csv = (
        "indicator_type,indicator_value,threat_type,severity,source,confidence\n"
        f"hash,{digest},poisoned-model,critical,test-feed,95\n"
    )
    with transaction(engine) as session:
        threat_intel.import_indicators(session, threat_intel.parse_csv(csv))


def test_listed_weights_are_not_activated_on_publish(engine: Engine) -> None:
    # Prepare: a completed run whose final weights hash is listed.
    checksum = "ab" * 32
    config = RunConfig(run_name="poisoned", task="digits", rounds=1, dp="off")
    with transaction(engine) as session:
        session.add(
            FlRun(
                name="poisoned",
                task="digits",
                config=config.model_dump(mode="json"),
                status="completed",
                last_completed_round=1,
                weights_checksum=checksum,
                seen_checksums=[],
            )
        )
    _list_hash(engine, checksum)

    # Execute
    publication = publish_run(engine, config, 0.99)

    # Assert
    assert publication.deployment_status == "rejected"
    assert publication.refusal is not None and "threat intelligence" in publication.refusal


def test_listed_vamn_weights_are_not_served_and_the_chat_falls_back(
    service: Service, fallback: FakeProvider
) -> None:
    # Prepare: an active semantic model whose (intact) weights' hash is listed.
    store = WeightsStore(service.services.settings.weights_dir)
    checksum = store.put({"fc.weight": np.ones((2, 4))})
    with transaction(service.engine) as session:
        row = registry.publish(
            session, model_name="vamn-s", model_version="1", head_type="semantic", weights_checksum=checksum
        )
        registry.activate(session, row.id)
    _list_hash(service.engine, checksum)
    org = service.org()

    # Execute
    body = service.chat(org, agent="scribe").json()

    # Assert
    assert body["provider"] == "finaceverse_fallback"
    assert len(fallback.received) == 1
