"""A small federation for the admin API tests: two organizations with budgets, a run, a published
model version, consents, a snapshot used by a round, and data subject requests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy import update

from aggregation.weights_store import WeightsStore
from consent_gate import dsr, records
from consent_gate.gate import take_snapshot
from consent_gate.lineage import record_snapshot_use
from privacy import accounting, ledger
from privacy.events import DpSgdEvent
from privacy.ledger import LedgerPolicy
from schema import directory, registry
from schema.db import transaction
from schema.models import (
    DataSubjectRequest,
    FederatedLearningContribution,
    FlNodeBinding,
    FlPublishedModel,
    FlRoundOutcome,
    FlRoundSummary,
    FlRun,
)
from schema.timeutil import utcnow
from tests.orchestrator.conftest import Service

#: Three charges of this event reach 62 %, 83 % and 100 % of a cap set to their epsilon.
EVENT = DpSgdEvent(noise_multiplier=1.0, sample_rate=0.02, steps=300)
POLICY = LedgerPolicy(default_epsilon_cap=8.0, default_delta=1e-5, accountant="rdp")


@dataclass
class World:
    acme: uuid.UUID
    baker: uuid.UUID
    run: str
    version_id: str
    head_type: str
    overdue_request: str
    open_request: str
    snapshot_users: int


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.normal(size=(8, 16)),
        "fc1.bias": np.zeros(8),
        "fc2.weight": rng.normal(size=(3, 8)),
    }


def build_world(service: Service) -> World:
    engine = service.engine
    acme, baker = service.org(f"Acme {uuid.uuid4().hex[:6]}"), service.org(f"Baker {uuid.uuid4().hex[:6]}")
    cap = accounting.epsilon_from_rdp(accounting.compose([EVENT] * 3), 1e-5)
    with transaction(engine) as session:
        ledger.set_budget(session, acme, "digits", cap, 1e-5, policy=POLICY, unit="record")
    contributions: dict[uuid.UUID, uuid.UUID] = {}
    for org, charges in ((acme, 2), (baker, 1)):
        for number in range(charges):
            with transaction(engine) as session:
                contribution = FederatedLearningContribution(
                    organization_id=org,
                    model_type="digits",
                    contribution_type="time_estimation",
                    gradient_checksum=f"{number:064x}",
                    contribution_weight=1,
                    privacy_budget_consumed=0,
                    aggregation_round=number + 1,
                    status="accepted",
                )
                session.add(contribution)
                session.flush()
                ledger.charge(session, org, "digits", EVENT, contribution.id, number + 1, policy=POLICY)
                contributions[org] = contribution.id
    run = f"nightly-{uuid.uuid4().hex[:6]}"
    store = WeightsStore(service.services.settings.weights_dir)
    checksum = store.put(weights(1))
    with transaction(engine) as session:
        fl_run = FlRun(
            name=run,
            task="digits",
            config={"rounds": 3, "round_timeout_s": 60.0, "dp": "local"},
            status="completed",
            last_completed_round=1,
            seen_checksums=[],
            weights_checksum=checksum,
        )
        session.add(fl_run)
        session.flush()
        for node, org, tenant in ((1, acme, "tenant-0"), (2, baker, "tenant-1")):
            session.add(
                FlNodeBinding(run_id=fl_run.id, node_id=str(node), organization_id=org, tenant=tenant)
            )
        session.add_all(
            [
                FlRoundOutcome(
                    run_id=fl_run.id,
                    aggregation_round=1,
                    organization_id=acme,
                    tenant="tenant-0",
                    status="accepted",
                    sampled=True,
                    contribution_id=contributions[acme],
                    epsilon_after=1.25,
                ),
                FlRoundOutcome(
                    run_id=fl_run.id,
                    aggregation_round=1,
                    organization_id=baker,
                    tenant="tenant-1",
                    status="rejected_budget",
                    sampled=False,
                    reason="epsilon would reach 9.1, over the cap 8",
                ),
                FlRoundSummary(
                    run_id=fl_run.id,
                    aggregation_round=1,
                    metric_name="accuracy",
                    metric_value=0.5,
                    accepted=1,
                    weights_checksum=checksum,
                ),
            ]
        )
        version = registry.publish(
            session,
            model_name="digits",
            model_version=f"{run}.r1",
            head_type="quantitative",
            weights_checksum=checksum,
        )
        registry.activate(session, version.id)
        session.add(
            FlPublishedModel(
                registry_id=version.id,
                run_id=fl_run.id,
                aggregation_round=1,
                metric_name="accuracy",
                metric_value=0.5,
                higher_is_better=True,
            )
        )
        version_id = str(version.id)
    with transaction(engine) as session:
        users = [directory.create_user(session, acme, f"user{n}@acme.example.com") for n in range(3)]
        for user in users:
            records.grant(session, acme, user.id, "federated_learning")
            records.grant(session, acme, user.id, "vamn_contribution")
            records.grant(session, acme, user.id, "ai_training")
        records.withdraw(session, acme, users[2].id, "vamn_contribution")
        snapshot = take_snapshot(session, acme, "digits")
        assert snapshot.id is not None
        record_snapshot_use(session, snapshot.id, 1, run_id=run, organization_id=acme)
        late = dsr.file_request(session, acme, users[0].id, "access")
        fresh = dsr.file_request(session, acme, users[1].id, "portability")
        session.execute(
            update(DataSubjectRequest)
            .where(DataSubjectRequest.id == late.id)
            .values(deadline=utcnow() - timedelta(days=1))
        )
        overdue_request, open_request = str(late.id), str(fresh.id)
        snapshot_users = len(snapshot.user_ids)
    return World(acme, baker, run, version_id, "quantitative", overdue_request, open_request, snapshot_users)
