"""The rules a round obeys, and every database write they imply (invariants 1, 2, 3, 6, 8).

``Governor`` is the I/O half of the governed strategy: it admits tenants through the consent gate
and the budget filter, builds each tenant's instruction, judges each reply (identity, DP
parameters, charge, consent re-check, update validation) and commits a round atomically with the
state a restarted server resumes from. The strategy (fl_server/strategy.py) only moves messages.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

import consent_gate
from aggregation import Accepted, ModelSpec, SeenChecksums, UpdateValidator
from fl_client.protocol import NodeIdentity, TrainInstruction, TrainReport
from fl_client.tasks import TaskSpec, get_task
from fl_server.config import RunConfig
from privacy import ledger
from privacy.events import CentralDpEvent, DpSgdEvent
from schema import audit
from schema.config import Settings
from schema.db import transaction
from schema.errors import BudgetExceededError, ConflictError, InvalidInputError, NotFoundError
from schema.models import (
    FederatedLearningContribution,
    FlNodeBinding,
    FlRoundOutcome,
    FlRoundSummary,
    FlRun,
    Organization,
)

ACCEPTED = "accepted"
REJECTED_CONSENT = "rejected_consent"
REJECTED_CONSENT_CHANGED = "rejected_consent_changed"
REJECTED_BUDGET = "rejected_budget"
REJECTED_INVALID = "rejected_invalid"
FAILED = "failed"
STATUSES = (ACCEPTED, REJECTED_CONSENT, REJECTED_CONSENT_CHANGED, REJECTED_BUDGET, REJECTED_INVALID, FAILED)

#: ``gradient_checksum`` is NOT NULL; a tenant that sent nothing gets this marker.
NO_UPDATE = "none"

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Tenant:
    """A node bound to an organization for this run."""

    node_id: int
    organization_id: uuid.UUID
    name: str


@dataclass
class Admission:
    """One round's plan: who may take part and who sits out, and why."""

    admitted: dict[int, Tenant] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str | None
    epsilon_after: float | None = None


@dataclass
class RunState:
    run_id: uuid.UUID
    last_completed_round: int
    weights_checksum: str | None
    seen: SeenChecksums


class Governor:
    """Database-backed governance of one run; safe to construct again after a crash (it resumes)."""

    def __init__(self, engine: Engine, config: RunConfig, settings: Settings) -> None:
        self.engine = engine
        self.config = config
        self.task: TaskSpec = get_task(config.task)
        self.policy = ledger.LedgerPolicy(settings.default_epsilon_cap, config.delta, settings.accountant)
        self.settings = settings
        self.run_id: uuid.UUID | None = None

    # --- run lifecycle ------------------------------------------------------------------------

    def start_run(self) -> RunState:
        """Create the run, or resume it at its next round; a completed run is not started again."""
        with transaction(self.engine) as session:
            run = session.scalar(select(FlRun).where(FlRun.name == self.config.run_name))
            if run is None:
                run = FlRun(
                    name=self.config.run_name,
                    task=self.config.task,
                    config=self.config.model_dump(mode="json"),
                    status="running",
                    last_completed_round=0,
                    seen_checksums=[],
                )
                session.add(run)
                session.flush()
                audit.append(
                    session,
                    organization_id=None,
                    action="fl.run_started",
                    resource_type="fl_run",
                    resource_id=run.id,
                    data={"name": run.name, "task": run.task, "rounds": self.config.rounds},
                )
            elif run.status == "completed":
                raise ConflictError(f"run '{run.name}' already completed; choose a new run name")
            elif run.task != self.config.task:
                raise ConflictError(f"run '{run.name}' trains {run.task}, not {self.config.task}")
            self.run_id = run.id
            return RunState(
                run.id, run.last_completed_round, run.weights_checksum, SeenChecksums(run.seen_checksums)
            )

    def complete_run(self) -> None:
        with transaction(self.engine) as session:
            run = session.get(FlRun, self.run_id)
            assert run is not None
            run.status = "completed"
            audit.append(
                session,
                organization_id=None,
                action="fl.run_completed",
                resource_type="fl_run",
                resource_id=run.id,
                data={"rounds": run.last_completed_round, "weights_checksum": run.weights_checksum},
            )

    # --- node identity ------------------------------------------------------------------------

    def bind(self, node_id: int, identity: NodeIdentity) -> Tenant:
        """Bind a node to the organization it names, once per run; a node cannot change sides."""
        with transaction(self.engine) as session:
            existing = session.scalar(
                select(FlNodeBinding).where(
                    FlNodeBinding.run_id == self.run_id, FlNodeBinding.node_id == str(node_id)
                )
            )
            if existing is not None:
                return Tenant(node_id, existing.organization_id, existing.tenant)
            try:
                org_id = uuid.UUID(identity.organization_id)
            except ValueError:
                raise InvalidInputError(
                    f"node {node_id} sent organization id '{identity.organization_id}'"
                ) from None
            if session.get(Organization, org_id) is None:
                raise NotFoundError(f"node {node_id} names organization {org_id}, which does not exist")
            session.add(
                FlNodeBinding(
                    run_id=self.run_id, node_id=str(node_id), organization_id=org_id, tenant=identity.tenant
                )
            )
            return Tenant(node_id, org_id, identity.tenant)

    # --- admission ----------------------------------------------------------------------------

    def planned_events(self, server_round: int) -> list[DpSgdEvent | CentralDpEvent]:
        """The DP events one round charges a participating tenant (what the filter projects)."""
        events: list[DpSgdEvent | CentralDpEvent] = []
        if self.config.dp.local:
            events.append(
                DpSgdEvent(self.config.noise_multiplier, self.config.sample_rate, self.config.steps)
            )
        if self.config.dp.central:
            events.append(self.central_event())
        return events

    def central_event(self) -> CentralDpEvent:
        return CentralDpEvent(
            self.config.central_noise_multiplier, self.config.fraction, 1, self.config.central_clip_norm
        )

    def admit(self, server_round: int, tenants: Iterable[Tenant]) -> Admission:
        """Consent gate and budget filter for every bound tenant; skipped ones are recorded with why."""
        admission = Admission()
        # One transaction for the whole federation: a commit (an fsync on SQLite) per tenant per
        # round dominated rounds with a thousand tenants. Reads only, unless a tenant is skipped.
        with transaction(self.engine) as session:
            for tenant in sorted(tenants, key=lambda t: t.name):
                eligible = consent_gate.eligibility(
                    session, tenant.organization_id, self.config.task, self.settings
                )
                if not eligible.eligible:
                    self._skip(
                        session, server_round, tenant, REJECTED_CONSENT, eligible.reason or eligible.code
                    )
                    admission.skipped[tenant.name] = REJECTED_CONSENT
                    continue
                reason = self._budget_refusal(session, tenant)
                if reason is not None:
                    self._skip(session, server_round, tenant, REJECTED_BUDGET, reason)
                    admission.skipped[tenant.name] = REJECTED_BUDGET
                    continue
                admission.admitted[tenant.node_id] = tenant
        return admission

    def instruct(
        self, server_round: int, tenants: Iterable[Tenant]
    ) -> dict[int, tuple[TrainInstruction, uuid.UUID]]:
        """Sampled tenants' instructions by node, with consent snapshots taken now (only for them).

        One transaction for all of them: a commit per tenant delayed every round's start.
        """
        instructions: dict[int, tuple[TrainInstruction, uuid.UUID]] = {}
        with transaction(self.engine) as session:
            for tenant in tenants:
                snapshot = consent_gate.take_snapshot(session, tenant.organization_id, self.config.task)
                assert snapshot.id is not None
                instruction = TrainInstruction(
                    run_id=self.config.run_name,
                    server_round=server_round,
                    task=self.config.task,
                    organization_id=str(tenant.organization_id),
                    consent_digest=snapshot.digest,
                    user_ids=tuple(str(u) for u in snapshot.user_ids),
                    dp=self.config.dp.local,
                    noise_multiplier=self.config.noise_multiplier,
                    clip_norm=self.config.clip_norm,
                    sample_rate=self.config.sample_rate,
                    steps=self.config.steps,
                    lr=self.config.lr,
                    seed=self._node_seed(server_round, tenant),
                    unit=self.config.privacy_unit,
                    expected_batch_size=self._expected_batch_size(len(snapshot.user_ids)),
                    epsilon_cap=self.policy.default_epsilon_cap,
                    delta=self.policy.default_delta,
                    holdout_fraction=self.config.holdout_fraction,
                )
                instructions[tenant.node_id] = (instruction, snapshot.id)
        return instructions

    def _expected_batch_size(self, consented_users: int) -> float:
        """A public denominator: the configured one, or the sample rate times the snapshot's users
        (records at record level are private, so the snapshot's user count stands in for them)."""
        if self.config.expected_batch_size is not None:
            return self.config.expected_batch_size
        return max(1.0, self.config.sample_rate * max(consented_users, 1))

    def _node_seed(self, server_round: int, tenant: Tenant) -> int:
        if self.config.seed == 0:
            return 0
        return (
            self.config.seed * 1_000_003 + server_round * 7919 + int(tenant.organization_id.int % 100_003)
        ) % (2**62)

    def _budget_refusal(self, session: Any, tenant: Tenant) -> str | None:
        events = self.planned_events(0)
        if not events:
            return None
        # All of a round's events at once (local DP-SGD and central DP), with the ledger's accountant.
        projection = ledger.project(
            session, tenant.organization_id, self.config.task, events, policy=self.policy
        )
        if not projection.exceeds:
            return None
        return (
            f"epsilon would reach {projection.epsilon_after:.4f} after this round, over the cap "
            f"{projection.epsilon_cap:g} (spent {projection.epsilon_before:.4f})"
        )

    # --- replies ------------------------------------------------------------------------------

    def judge(
        self,
        server_round: int,
        tenant: Tenant,
        instruction: TrainInstruction,
        snapshot_id: uuid.UUID,
        report: TrainReport | None,
        update: Arrays | None,
        *,
        error: str | None,
        validator: UpdateValidator,
        reference: Arrays,
    ) -> Verdict:
        """Decide one reply's status and write its contribution, charge and outcome in one transaction."""
        with transaction(self.engine) as session:
            checksum = report.update_checksum if report and report.update_checksum else NO_UPDATE
            contribution = self._new_contribution(session, server_round, tenant, checksum, "pending")
            verdict, charged = self._decide(
                session,
                server_round,
                tenant,
                instruction,
                report,
                update,
                error,
                validator,
                reference,
                contribution.id,
            )
            contribution.status = verdict.status
            dp_event = charged
            session.add(
                FlRoundOutcome(
                    run_id=self.run_id,
                    aggregation_round=server_round,
                    organization_id=tenant.organization_id,
                    tenant=tenant.name,
                    status=verdict.status,
                    reason=verdict.reason,
                    contribution_id=contribution.id,
                    dp_event=dp_event,
                    epsilon_after=verdict.epsilon_after,
                )
            )
            if verdict.status == ACCEPTED:
                consent_gate.record_snapshot_use(
                    session,
                    snapshot_id,
                    server_round,
                    run_id=self.config.run_name,
                    organization_id=tenant.organization_id,
                )
            self._audit(session, server_round, tenant, contribution.id, verdict.status, verdict.reason)
        return verdict

    def _decide(
        self,
        session: Any,
        server_round: int,
        tenant: Tenant,
        instruction: TrainInstruction,
        report: TrainReport | None,
        update: Arrays | None,
        error: str | None,
        validator: UpdateValidator,
        reference: Arrays,
        contribution_id: uuid.UUID,
    ) -> tuple[Verdict, dict[str, Any] | None]:
        if error is not None or report is None:
            return Verdict(FAILED, error or "no report in the reply"), None
        if report.organization_id != str(tenant.organization_id):
            return Verdict(
                REJECTED_INVALID,
                f"node {tenant.node_id} is bound to {tenant.organization_id} but claimed {report.organization_id}",
            ), None
        if not report.trained:
            return Verdict(REJECTED_BUDGET, f"node refused to train: {report.refusal}"), None

        # Privacy spent at the node is charged first: it was spent whatever happens to the update.
        charged: dict[str, Any] | None = None
        epsilon_after: float | None = None
        if instruction.dp:
            problem = _dp_params_problem(instruction, report)
            if problem is not None:
                return Verdict(REJECTED_INVALID, problem), None
            event = DpSgdEvent(report.noise_multiplier, report.sample_rate, report.steps)
            charged = {
                "noise_multiplier": event.noise_multiplier,
                "sample_rate": event.sample_rate,
                "steps": event.steps,
            }
            try:
                result = ledger.charge(
                    session,
                    tenant.organization_id,
                    self.config.task,
                    event,
                    contribution_id,
                    server_round,
                    policy=self.policy,
                )
            except BudgetExceededError as exc:
                return Verdict(REJECTED_BUDGET, str(exc)), None
            epsilon_after = result.epsilon_after

        if not consent_gate.recheck(
            session, tenant.organization_id, self.config.task, report.consent_digest
        ) or (report.consent_digest != instruction.consent_digest):
            return Verdict(
                REJECTED_CONSENT_CHANGED,
                "consent changed since the snapshot this update was trained on",
                epsilon_after,
            ), charged
        if update is None:
            return Verdict(REJECTED_INVALID, "reply carried no weights", epsilon_after), charged
        checked = validator.validate(
            update,
            reference=reference,
            claimed_checksum=report.update_checksum,
            weight=report.num_examples,
        )
        if not isinstance(checked, Accepted):
            return Verdict(REJECTED_INVALID, f"{checked.reason}: {checked.message}", epsilon_after), charged
        return Verdict(ACCEPTED, None, epsilon_after), charged

    def _skip(self, session: Any, server_round: int, tenant: Tenant, status: str, reason: str) -> None:
        contribution = self._new_contribution(session, server_round, tenant, NO_UPDATE, status)
        session.add(
            FlRoundOutcome(
                run_id=self.run_id,
                aggregation_round=server_round,
                organization_id=tenant.organization_id,
                tenant=tenant.name,
                status=status,
                sampled=False,
                reason=reason,
                contribution_id=contribution.id,
            )
        )
        self._audit(session, server_round, tenant, contribution.id, status, reason)

    def _new_contribution(
        self, session: Any, server_round: int, tenant: Tenant, checksum: str, status: str
    ) -> FederatedLearningContribution:
        contribution = FederatedLearningContribution(
            organization_id=tenant.organization_id,
            model_type=self.config.task,
            contribution_type=self.task.contribution_type,
            gradient_checksum=checksum,
            contribution_weight=Decimal(0),
            privacy_budget_consumed=Decimal(0),
            aggregation_round=server_round,
            status=status,
        )
        session.add(contribution)
        session.flush()
        return contribution

    def _audit(
        self,
        session: Any,
        server_round: int,
        tenant: Tenant,
        contribution_id: uuid.UUID,
        status: str,
        reason: str | None,
    ) -> None:
        audit.append(
            session,
            organization_id=tenant.organization_id,
            action=f"fl.contribution_{status}",
            resource_type="federated_learning_contribution",
            resource_id=contribution_id,
            data={
                "run": self.config.run_name,
                "round": server_round,
                "tenant": tenant.name,
                "reason": reason,
            },
        )

    # --- end of round -------------------------------------------------------------------------

    def commit_round(
        self,
        server_round: int,
        *,
        weights_checksum: str,
        weights: Mapping[uuid.UUID, float],
        central_charged: Iterable[Tenant],
        seen: SeenChecksums,
        metric: float | None,
    ) -> None:
        """Close a round atomically: weights, central-DP charges, summary and the resume point."""
        with transaction(self.engine) as session:
            for tenant in central_charged:
                try:
                    ledger.charge(
                        session,
                        tenant.organization_id,
                        self.config.task,
                        self.central_event(),
                        None,
                        server_round,
                        policy=self.policy,
                    )
                except BudgetExceededError as exc:  # admission projected it; a concurrent run spent it
                    raise ConflictError(f"central DP charge for {tenant.name} refused: {exc}") from None
            total = sum(weights.values())
            outcomes = session.scalars(
                select(FlRoundOutcome).where(
                    FlRoundOutcome.run_id == self.run_id,
                    FlRoundOutcome.aggregation_round == server_round,
                    FlRoundOutcome.status == ACCEPTED,
                )
            )
            for outcome in outcomes:
                share = weights.get(outcome.organization_id, 0.0) / total if total > 0 else 0.0
                contribution = session.get(FederatedLearningContribution, outcome.contribution_id)
                if contribution is not None:
                    contribution.contribution_weight = Decimal(f"{share:.6f}")
            run = session.get(FlRun, self.run_id)
            assert run is not None
            run.last_completed_round = server_round
            run.weights_checksum = weights_checksum
            run.seen_checksums = sorted(seen)
            session.add(
                FlRoundSummary(
                    run_id=self.run_id,
                    aggregation_round=server_round,
                    metric_name=self.task.metric.name,
                    metric_value=None if metric is None or math.isnan(metric) else metric,
                    accepted=len(weights),
                    weights_checksum=weights_checksum,
                )
            )
            audit.append(
                session,
                organization_id=None,
                action="fl.round_committed",
                resource_type="fl_run",
                resource_id=self.run_id,
                data={"round": server_round, "accepted": len(weights), "weights_checksum": weights_checksum},
            )

    def record_metric(self, server_round: int, metric: float | None) -> None:
        with transaction(self.engine) as session:
            summary = session.scalar(
                select(FlRoundSummary).where(
                    FlRoundSummary.run_id == self.run_id, FlRoundSummary.aggregation_round == server_round
                )
            )
            if summary is not None:
                summary.metric_value = None if metric is None or math.isnan(metric) else metric


def _dp_params_problem(instruction: TrainInstruction, report: TrainReport) -> str | None:
    """The node may be more private than asked (more noise, fewer steps, lower rate), never less."""
    if report.noise_multiplier < instruction.noise_multiplier:
        return (
            f"noise multiplier {report.noise_multiplier} below the instructed {instruction.noise_multiplier}"
        )
    if report.sample_rate > instruction.sample_rate:
        return f"sample rate {report.sample_rate} above the instructed {instruction.sample_rate}"
    if report.steps > instruction.steps:
        return f"{report.steps} steps, more than the instructed {instruction.steps}"
    if report.clip_norm > instruction.clip_norm:
        return f"clip norm {report.clip_norm} above the instructed {instruction.clip_norm}"
    return None


def spec_of(arrays: Arrays) -> ModelSpec:
    return ModelSpec.from_arrays(arrays)
