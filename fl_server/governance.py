"""The rules a round obeys, and every database write they imply (invariants 1, 2, 3, 6, 8).

``Governor`` is the I/O half of the governed strategy: it admits tenants through the consent gate
and the budget filter, **charges and then instructs** them (``dispatch``), judges each reply
(identity, DP parameters against the instruction, consent re-check, update validation) and
commits a round atomically with the state a restarted server resumes from. The strategy
(fl_server/strategy.py) only moves messages.

Verdicts. A refusal (failed, rejected: evidence about a tenant or its node) is committed when it is
decided. An acceptance is only read (the consent re-check) when its reply arrives and is written
by the round's commit, in the same transaction as the weights: an accepted update counts only in a
committed round, so its contribution and outcome rows, snapshot use, audit record and hub event
appear with the round or not at all (a round that never commits is aborted on resume). A dispatch
writes its tenants' rows, and charges them, in a few statements (``ledger.charge_many``).

Charge before release (invariant 3, 9). The ledger holds what the server *instructed*, charged
in the transaction that creates the contribution row, before the message leaves. A timeout, a
refusal, a malformed reply, a crash or a resume can then only over-charge (a dispatch whose reply
never counted), never under-charge; and a node cannot lower its charge by reporting other
parameters: a report less private than instructed is rejected, the instructed charge stays.

Non-private mode. ``dp=off`` is the only mode where a server seed is sent (reproducible runs). An
update trained without noise is not differentially private at all, so its release is charged as
a ``non_private`` event, epsilon = +inf, in every unit of the tenant's ledger (record, user and
tenant level: nothing bounds any of them). It is not cap-checked — running without DP is the
operator's explicit choice, and refusing the charge would only hide the release — but it is
audited, and afterwards the tenant's ledgers read +inf ("exhausted"), so every later DP charge for
the model type is refused: a guarantee cannot be restored after the data left without one.

Delta belongs to the budget: the ledger evaluates every charge at the tenant budget's delta (the
platform default without a budget), never at the run's. A run whose delta is larger than a
tenant's budget delta would claim a weaker guarantee than the tenant accepted; that tenant sits
the run out (``rejected_budget``, with the two deltas), and the other tenants go on.

Round attempts. Every start (or resume) of a run is a new attempt (``FlRun.attempt``), and every
outcome row names the attempt that wrote it. On resume, the rows earlier attempts left in rounds
that never committed become ``aborted`` (their ledger events stay: the releases were real), so a
round's accepted contributions and weights come from one attempt only.

The run lease. One server drives a run: the server that starts it holds a lease (owner, heartbeat,
expiry) renewed at every dispatch, written judgement (a refusal) and commit under a row lock on
the run (``SELECT … FOR UPDATE`` on PostgreSQL), and a commit also requires the run to be exactly
one round behind. A second server on a live lease is refused (``ConflictError`` naming the owner);
a lease whose owner process is gone (same host) or that lapsed may be taken over, and the old
owner's next dispatch, refusal or commit then fails instead of double counting.

One organization, one node: a node naming an organization another node already speaks for in the
run (or an unknown organization, or an invalid id) is skipped with a logged, audited reason.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, Table, bindparam, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

import consent_gate
from aggregation import Accepted, ModelSpec, SeenChecksums, UpdateValidator
from fl_client.protocol import NodeIdentity, TrainInstruction, TrainReport
from fl_client.tasks import TaskSpec, get_task
from fl_server.anomalies import FederationWatch
from fl_server.config import DpMode, RunConfig
from orchestrator.security import node_admission
from privacy import ledger
from privacy.events import UNITS, CentralDpEvent, DpEvent, DpSgdEvent, NonPrivateEvent
from schema import audit, restrictions
from schema import events as hub_events
from schema.anomaly_policy import load_policy
from schema.config import Settings
from schema.db import transaction
from schema.errors import BudgetExceededError, ConflictError, DatabaseUnavailableError
from schema.models import (
    FederatedLearningContribution,
    FlNodeBinding,
    FlPublishedModel,
    FlRoundOutcome,
    FlRoundSummary,
    FlRun,
    Organization,
    PrivacyBudget,
)

log = logging.getLogger("accute.fl_server")
_T = TypeVar("_T")

#: Instructed and charged; the reply has not been judged yet (a crash leaves it so until resume).
DISPATCHED = "dispatched"
ACCEPTED = "accepted"
REJECTED_CONSENT = "rejected_consent"
REJECTED_CONSENT_CHANGED = "rejected_consent_changed"
REJECTED_BUDGET = "rejected_budget"
REJECTED_INVALID = "rejected_invalid"
#: The zero-trust policy keeps the tenant out (an auto-block or recent anomalies of its organization).
REJECTED_POLICY = "rejected_policy"
FAILED = "failed"
#: Written by an attempt of a round that never committed; its charges stay.
ABORTED = "aborted"
#: The organization's dead man's switch fired and paused its training (``schema.restrictions``).
REJECTED_PAUSED = "rejected_paused"
STATUSES = (
    DISPATCHED,
    ACCEPTED,
    REJECTED_CONSENT,
    REJECTED_CONSENT_CHANGED,
    REJECTED_BUDGET,
    REJECTED_INVALID,
    REJECTED_POLICY,
    FAILED,
    ABORTED,
    REJECTED_PAUSED,
)

#: What a tenant can truthfully claim as its example count in a non-DP run (weights by counts):
#: its consent snapshot's users times this many records each (tenants hold 8-25 records a user).
#: A claim above it is rejected as an outlier: a self-reported 10^9 once took 0.999999 of FedAvg.
MAX_RECORDS_PER_USER = 100

#: Reason of a bound tenant whose node is not connected when a round starts.
OFFLINE = "offline"

#: Local DP and dp=off: a round draws at most this many times its sample size in replacements for
#: sampled tenants that failed the gate (in batches as large as the shortfall), so it gates at most
#: (1 + this) x its sample size even in a federation that is mostly ineligible.
MAX_REPLACEMENT_FACTOR = 3

#: A run lease lasts at least this long past its last heartbeat (and 3 round timeouts + 30 s).
LEASE_MIN_S = 60.0
#: A heartbeat younger than this is not rewritten (judgements come in by the thousand).
LEASE_RENEW_S = 5.0

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
    #: Tenants drawn to replace sampled ones that failed the gate (local DP and dp=off only).
    replacements: list[Tenant] = field(default_factory=list)
    #: Central DP: the tenants eligible now, charged the round's central event (sampled or not).
    population: list[Tenant] = field(default_factory=list)


@dataclass(frozen=True)
class Dispatch:
    """One tenant instructed in one round: what was charged and where its rows are."""

    tenant: Tenant
    instruction: TrainInstruction
    snapshot_id: uuid.UUID
    contribution_id: uuid.UUID
    outcome_id: uuid.UUID
    #: The tenant's epsilon (run unit) right after the dispatch's charge; None without a local charge.
    epsilon_after: float | None


@dataclass
class DispatchBatch:
    """A round's dispatch: who was charged and instructed, who was refused, who paid central DP."""

    dispatched: dict[int, Dispatch] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    central_charged: list[Tenant] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str | None
    epsilon_after: float | None = None
    #: A rejected outlier: how far over its bound (norm / bound, or weight / maximum).
    excess: float | None = None


@dataclass(frozen=True)
class _Acceptance:
    """An accepted reply, written with its round's commit (``commit_round``), not on its own."""

    dispatch: Dispatch
    checksum: str | None


@dataclass
class RunState:
    run_id: uuid.UUID
    last_completed_round: int
    weights_checksum: str | None
    seen: SeenChecksums
    attempt: int = 1
    #: The run had completed before this start: nothing is left to train (maybe to publish).
    completed: bool = False


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive timestamps; they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _owner_alive(owner: str) -> bool:
    """Whether the lease owner (``host:pid:token``) may still be running. Only a process on this
    host can be checked; any other is presumed alive until its lease lapses."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True
    try:
        pid = int(rest.partition(":")[0])
    except ValueError:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed server its parent has not reaped yet is a zombie: gone
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def hold_organizations(session: Any, organization_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Organization]:
    """The organizations, loaded in one statement; keep the result for the transaction's length.

    The session's identity map holds objects weakly: unreferenced, an organization loaded by one
    validation (``get_organization`` in the ledger, the consent gate, the lineage) was gone by the
    next, so each loaded it again, about five statements per tenant per round. Held here, those
    validations find it in the identity map; an organization missing here is still reported by
    them (they look it up and raise ``NotFoundError``).
    """
    wanted = sorted(set(organization_ids))
    if not wanted:
        return {}
    rows = session.scalars(_ORGANIZATIONS, {"ids": wanted})
    return {organization.id: organization for organization in rows}


# Statements of the hot path, built once (building one cost about as much as running it on SQLite).
_ORGANIZATIONS = select(Organization).where(Organization.id.in_(bindparam("ids", expanding=True)))
_RUNS: Table = FlRun.__table__  # type: ignore[assignment]
_LEASE = (
    select(_RUNS.c.name, _RUNS.c.lease_owner, _RUNS.c.heartbeat_at)
    .where(_RUNS.c.id == bindparam("run"))
    .with_for_update()
)
_RENEW = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("run"))
    .values(
        lease_owner=bindparam("new_owner"),
        heartbeat_at=bindparam("new_heartbeat"),
        lease_expires_at=bindparam("new_expiry"),
    )
)


_CONTRIBUTIONS: Table = FederatedLearningContribution.__table__  # type: ignore[assignment]
_INSERT_CONTRIBUTION = _CONTRIBUTIONS.insert()
_OUTCOMES: Table = FlRoundOutcome.__table__  # type: ignore[assignment]
_INSERT_OUTCOME = _OUTCOMES.insert()


@functools.cache
def _update_by_id(table: Table, columns: tuple[str, ...]) -> Any:
    """``UPDATE table SET columns WHERE id = :row_id``, built once per table and column set."""
    return (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values({name: bindparam(f"new_{name}") for name in columns})
    )


def lease_refusal(run: FlRun, now: datetime | None = None) -> str | None:
    """Why another server may not drive ``run`` now (a live lease, naming its owner), or None."""
    now = now or datetime.now(UTC)
    owner, expires = run.lease_owner, _utc(run.lease_expires_at)
    if owner is None or expires is None or expires <= now or not _owner_alive(owner):
        return None
    return (
        f"run '{run.name}' is driven by server {owner} (lease until {expires.isoformat()}); "
        "stop that server or wait for its lease to lapse"
    )


class Governor:
    """Database-backed governance of one run; safe to construct again after a crash (it resumes)."""

    def __init__(self, engine: Engine, config: RunConfig, settings: Settings) -> None:
        self.engine = engine
        self.config = config
        self.task: TaskSpec = get_task(config.task)
        # The platform's delta, never the run's: delta belongs to the budget (module docstring).
        self.policy = ledger.LedgerPolicy.from_settings(settings)
        #: Zero trust for nodes (orchestrator/security/node_admission.py); None when it is off.
        self.zero_trust = node_admission.node_policy(settings)
        self.settings = settings
        self.run_id: uuid.UUID | None = None
        #: Who holds the run lease: host, process and a token unique to this Governor.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.attempt = 0
        #: Nodes bound (or found bound) by this server: a binding outside it is an earlier attempt's.
        self._bound_here: set[str] = set()
        #: Accepted replies by round, written by the round's commit.
        self._accepted: dict[int, list[_Acceptance]] = {}
        #: Anomaly rules of the federation (fl_server/anomalies.py); None when detection is off.
        self.watch: FederationWatch | None = (
            FederationWatch(load_policy(settings.anomaly_policy_file), settings.anomaly_dedup_window_s)
            if settings.anomaly_detection
            else None
        )

    # --- the run lease ------------------------------------------------------------------------

    def lease_seconds(self) -> float:
        """Longer than the longest silence of a healthy server (training plus evaluation timeouts)."""
        return max(LEASE_MIN_S, 3 * self.config.round_timeout_s + 30.0)

    def _renew(self, run: FlRun, now: datetime) -> None:
        run.lease_owner = self.owner
        run.heartbeat_at = now
        run.lease_expires_at = now + timedelta(seconds=self.lease_seconds())

    def _take_lease(self, run: FlRun) -> None:
        now = datetime.now(UTC)
        refusal = lease_refusal(run, now)
        if run.lease_owner != self.owner and refusal is not None:
            raise ConflictError(refusal)
        self._renew(run, now)

    def _hold_lease(self, session: Any) -> FlRun:
        """The run row, locked, with this server's lease renewed; another owner means we were
        replaced and must stop before writing anything."""
        run: FlRun | None = session.get(FlRun, self.run_id, with_for_update=True, populate_existing=True)
        assert run is not None
        if run.lease_owner != self.owner:
            raise ConflictError(
                f"run '{run.name}' was taken over by server {run.lease_owner}; this server stops"
            )
        now = datetime.now(UTC)
        last = _utc(run.heartbeat_at)
        if last is None or (now - last).total_seconds() >= LEASE_RENEW_S:
            self._renew(run, now)  # at most one write every few seconds on the hot path
        return run

    def _check_lease(self, session: Any) -> None:
        """``_hold_lease`` for the judgements and dispatches, which need the lock and the check but
        not the run itself: three columns read under the lock, not the whole row (its checksums
        list grows every round), and the heartbeat written by one statement when it is due."""
        row = session.execute(_LEASE, {"run": self.run_id}).one()
        if row.lease_owner != self.owner:
            raise ConflictError(
                f"run '{row.name}' was taken over by server {row.lease_owner}; this server stops"
            )
        now = datetime.now(UTC)
        last = _utc(row.heartbeat_at)
        if last is None or (now - last).total_seconds() >= LEASE_RENEW_S:
            expiry = now + timedelta(seconds=self.lease_seconds())
            session.execute(
                _RENEW,
                {"run": self.run_id, "new_owner": self.owner, "new_heartbeat": now, "new_expiry": expiry},
            )

    def release_lease(self) -> None:
        """Give the lease up (a server stopping on an error), so a restart need not wait for it."""
        if self.run_id is None:
            return
        with transaction(self.engine) as session:
            run = session.get(FlRun, self.run_id, with_for_update=True)
            if run is not None and run.lease_owner == self.owner:
                run.lease_owner = None
                run.lease_expires_at = None

    # --- run lifecycle ------------------------------------------------------------------------

    def start_run(self) -> RunState:
        """Create the run, or resume it at its next round; a completed run is not started again."""
        with transaction(self.engine) as session:
            run = session.scalar(select(FlRun).where(FlRun.name == self.config.run_name).with_for_update())
            if run is None:
                run = FlRun(
                    name=self.config.run_name,
                    task=self.config.task,
                    config=self.config.model_dump(mode="json"),
                    status="running",
                    last_completed_round=0,
                    seen_checksums=[],
                    attempt=0,
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
            elif run.task != self.config.task:
                raise ConflictError(f"run '{run.name}' trains {run.task}, not {self.config.task}")
            self.run_id = run.id
            if run.status == "completed":
                # Nothing to train; the caller publishes it if a crash came before the publication.
                return RunState(
                    run.id,
                    run.last_completed_round,
                    run.weights_checksum,
                    SeenChecksums(run.seen_checksums),
                    run.attempt,
                    completed=True,
                )
            self._take_lease(run)
            run.attempt += 1
            self.attempt = run.attempt
            self._abort_earlier_attempts(session, run)
            return RunState(
                run.id,
                run.last_completed_round,
                run.weights_checksum,
                SeenChecksums(run.seen_checksums),
                run.attempt,
            )

    def _abort_earlier_attempts(self, session: Any, run: FlRun) -> None:
        """Rows earlier attempts wrote in rounds that never committed become ``aborted``: the round
        is run again by this attempt, and only its rows count. Their charges stay (the server may
        have released the instruction, and the node may have trained and sent its update)."""
        stale = session.scalars(
            select(FlRoundOutcome).where(
                FlRoundOutcome.run_id == run.id,
                FlRoundOutcome.attempt < run.attempt,
                FlRoundOutcome.status != ABORTED,
                FlRoundOutcome.aggregation_round > run.last_completed_round,
            )
        )
        for outcome in stale:
            was = outcome.status + (f": {outcome.reason}" if outcome.reason else "")
            outcome.reason = (
                f"round attempt {outcome.attempt} was interrupted before the round committed (it was "
                f"{was}); any charge stays"
            )
            outcome.status = ABORTED
            contribution = (
                session.get(FederatedLearningContribution, outcome.contribution_id)
                if outcome.contribution_id is not None
                else None
            )
            if contribution is not None:
                contribution.status = ABORTED
                contribution.contribution_weight = Decimal(0)

    def complete_run(self, publish: Callable[[Any, FlRun], Any] | None = None) -> Any:
        """Mark the run completed and, in the same transaction, publish it (``publish(session, run)``):
        a crash cannot leave a completed run unpublished. Returns what ``publish`` returned.
        Retried on a transient database error (a failed try rolled the publication back too)."""
        return retry_transient(lambda: self._complete_run_once(publish), "completing the run")

    def _complete_run_once(self, publish: Callable[[Any, FlRun], Any] | None) -> Any:
        with transaction(self.engine) as session:
            run = self._hold_lease(session)
            run.status = "completed"
            run.lease_owner = None
            run.lease_expires_at = None
            published = publish(session, run) if publish is not None else None
            audit.append(
                session,
                organization_id=None,
                action="fl.run_completed",
                resource_type="fl_run",
                resource_id=run.id,
                data={"rounds": run.last_completed_round, "weights_checksum": run.weights_checksum},
            )
            return published

    # --- node identity ------------------------------------------------------------------------

    def bind(self, node_id: int, identity: NodeIdentity) -> tuple[Tenant | None, str | None]:
        """Bind a node to the organization it names, once per run: ``(tenant, None)``, or
        ``(None, why)`` when the node is skipped (an invalid or unknown organization id, or an
        organization another node already speaks for in this run). Skipping never stops the run.
        """
        return self.bind_many([(node_id, identity)])[0]

    def bind_many(
        self, identities: Sequence[tuple[int, NodeIdentity]]
    ) -> list[tuple[Tenant | None, str | None]]:
        """``bind`` for several nodes, in order, in one transaction (one commit, an fsync on
        SQLite, for a round's newly identified nodes instead of one each) with three set-based
        reads for the batch (its nodes' bindings, its organizations, their bindings). Nodes of the
        batch see each other's bindings: a second node naming an organization the first just took
        is skipped, exactly as if they were bound one after the other."""
        if not identities:
            return []
        organization_ids: dict[int, uuid.UUID | None] = {}
        for node_id, identity in identities:
            try:
                organization_ids[node_id] = uuid.UUID(identity.organization_id)
            except (ValueError, AttributeError, TypeError):
                organization_ids[node_id] = None
        named = {org for org in organization_ids.values() if org is not None}
        with transaction(self.engine) as session:
            of_run = select(FlNodeBinding).where(FlNodeBinding.run_id == self.run_id)
            by_node = {
                b.node_id: b
                for b in session.scalars(
                    of_run.where(FlNodeBinding.node_id.in_([str(n) for n, _ in identities]))
                )
            }
            existing_orgs = (
                set(session.scalars(select(Organization.id).where(Organization.id.in_(named))))
                if named
                else set()
            )
            by_org = (
                {
                    b.organization_id: b
                    for b in session.scalars(of_run.where(FlNodeBinding.organization_id.in_(named)))
                }
                if named
                else {}
            )
            return [
                self._bind_one(
                    session, node_id, identity, organization_ids[node_id], by_node, existing_orgs, by_org
                )
                for node_id, identity in identities
            ]

    def _bind_one(
        self,
        session: Any,
        node_id: int,
        identity: NodeIdentity,
        org_id: uuid.UUID | None,
        by_node: dict[str, FlNodeBinding],
        existing_orgs: set[uuid.UUID],
        by_org: dict[uuid.UUID, FlNodeBinding],
    ) -> tuple[Tenant | None, str | None]:
        """One node of ``bind_many``: ``by_node`` and ``by_org`` are the run's bindings as the
        batch left them so far (this method keeps them current)."""
        existing = by_node.get(str(node_id))
        if existing is not None and existing.node_id == str(node_id):  # not rebound to another since
            self._bound_here.add(existing.node_id)
            return Tenant(node_id, existing.organization_id, existing.tenant), None
        reason: str | None = None
        if org_id is None:
            reason = f"node {node_id} sent an invalid organization id '{identity.organization_id}'"
        elif org_id not in existing_orgs:
            reason = f"node {node_id} names organization {org_id}, which does not exist"
        else:
            other = by_org.get(org_id)
            if other is not None and other.node_id not in self._bound_here:
                return self._rebind(session, other, node_id, identity), None
            if other is not None:
                reason = (
                    f"node {node_id} names organization {org_id}, which node {other.node_id} already "
                    "speaks for in this run (one node per organization)"
                )
        if reason is not None:
            audit.append(
                session,
                organization_id=None,
                action="fl.node_skipped",
                resource_type="fl_run",
                resource_id=self.run_id,
                data={"run": self.config.run_name, "node": str(node_id), "reason": reason},
            )
            log.warning("run %s: %s; the node is skipped", self.config.run_name, reason)
            return None, reason
        assert org_id is not None
        binding = FlNodeBinding(
            run_id=self.run_id, node_id=str(node_id), organization_id=org_id, tenant=identity.tenant
        )
        session.add(binding)
        by_node[binding.node_id] = by_org[org_id] = binding
        self._bound_here.add(str(node_id))
        return Tenant(node_id, org_id, identity.tenant), None

    def _rebind(self, session: Any, binding: FlNodeBinding, node_id: int, identity: NodeIdentity) -> Tenant:
        """An organization bound to a node by an earlier attempt now speaks through a new node (a
        restarted SuperNode or SuperLink gives nodes new ids): the new node takes the binding over.
        Still one node per organization: a third node naming it in this attempt is skipped."""
        previous = binding.node_id
        binding.node_id = str(node_id)
        self._bound_here.add(str(node_id))
        audit.append(
            session,
            organization_id=None,
            action="fl.node_rebound",
            resource_type="fl_run",
            resource_id=self.run_id,
            data={"run": self.config.run_name, "node": str(node_id), "previous_node": previous},
        )
        log.info(
            "run %s: node %s now speaks for %s (was node %s)",
            self.config.run_name,
            node_id,
            binding.tenant,
            previous,
        )
        return Tenant(node_id, binding.organization_id, binding.tenant)

    # --- admission ----------------------------------------------------------------------------

    def local_event(self) -> DpSgdEvent:
        """The DP-SGD event one round instructs a tenant's node to run (in the run's unit)."""
        return DpSgdEvent(
            self.config.noise_multiplier, self.config.sample_rate, self.config.steps, self.config.privacy_unit
        )

    def planned_events(self, server_round: int) -> list[DpEvent]:
        """The DP events one round charges a participating tenant (what the filter projects)."""
        events: list[DpEvent] = []
        if self.config.dp.local:
            events.append(self.local_event())
        if self.config.dp.central:
            events.append(self.central_event())
        return events

    def central_event(self) -> CentralDpEvent:
        return CentralDpEvent(
            self.config.central_noise_multiplier, self.config.fraction, 1, self.config.central_clip_norm
        )

    def admit(
        self,
        server_round: int,
        sampled: Iterable[Tenant],
        *,
        reserve: Callable[[int], list[Tenant]] | None = None,
        population: Iterable[Tenant] | None = None,
    ) -> Admission:
        """Gate the round's sampled tenants (consent, delta rule, budget); a round costs what it samples.

        Only ``sampled`` is gated, with set-based consent queries: bound tenants the round did not
        sample are not looked at, so a round of 10 among 10,000 costs what a round of 10 among 10
        does. A sampled tenant that fails is recorded (outcome row, reason) and:

        - with a ``reserve`` (local DP and dp=off, where each tenant's ledger accounts only its own
          releases), replaced by the tenants ``reserve(n)`` draws next (up to ``n``, as many as
          the shortfall; empty when none is left), until the round has as many admitted as it
          sampled, the reserve runs out, or ``MAX_REPLACEMENT_FACTOR`` x the sample size were
          drawn (a federation that is mostly ineligible cannot make a round gate everyone). Each
          batch is its own transaction, so the reserve may bind the nodes it draws (lazy
          identification, ``GovernedStrategy``) between two;
        - without one (central DP), simply skipped: each tenant's inclusion stays at most the
          accountant's q, and replacing it would raise everyone else's above q.

        ``population`` (central DP): every bound tenant; the tenants eligible now (consent and delta
        rule, two set-based queries for the whole federation) become ``Admission.population``, the
        tenants the round's central event is charged to (their caps are checked by that charge).
        """
        admission = Admission()
        batch = list(sampled)
        wanted = len(batch)
        allowance = MAX_REPLACEMENT_FACTOR * wanted if reserve is not None else 0

        def gate(batch: list[Tenant], population: Iterable[Tenant] | None) -> None:
            # One transaction per batch: a commit (an fsync on SQLite) per tenant dominated large
            # rounds. Reads only, unless a tenant is skipped. Retried on a transient error (a
            # deadlock, a lost connection): a failed try wrote nothing, and its decisions are undone.
            admitted, skipped = dict(admission.admitted), dict(admission.skipped)

            def once() -> None:
                with transaction(self.engine) as session:
                    if population is not None:
                        admission.population = self._eligible_population(session, population)
                    if batch:
                        _held = hold_organizations(session, (t.organization_id for t in batch))  # kept alive
                        self._gate(session, server_round, batch, admission)
                    if population is not None:
                        self._outside_population(session, server_round, admission)

            def undo() -> None:
                admission.admitted, admission.skipped = dict(admitted), dict(skipped)

            retry_transient(once, f"admitting round {server_round}", undo)

        population = list(population) if population is not None else None
        gate(batch, population)
        while reserve is not None:
            missing = min(wanted - len(admission.admitted), allowance - len(admission.replacements))
            batch = reserve(missing) if missing > 0 else []
            if not batch:
                break
            admission.replacements.extend(batch)
            gate(batch, None)
        return admission

    def unseen_bindings(self) -> list[Tenant]:
        """Organizations an earlier attempt bound whose node has not spoken to this server.

        A resumed run whose node never answers (busy with the dead server's message, or gone) must
        still get its outcome each round (``failed`` / ``offline``), not silently none. Empty on
        a first attempt: every binding was made here.
        """
        if self.attempt <= 1:
            return []
        with transaction(self.engine) as session:
            rows = session.execute(
                select(FlNodeBinding.node_id, FlNodeBinding.organization_id, FlNodeBinding.tenant).where(
                    FlNodeBinding.run_id == self.run_id
                )
            ).all()
        return [
            Tenant(int(node), org, name)
            for node, org, name in rows
            if node not in self._bound_here and node.isdigit()
        ]

    def _gate(self, session: Any, server_round: int, tenants: list[Tenant], admission: Admission) -> None:
        """Zero trust and consent (one grouped query each for the batch), then the delta rule and
        the cap (per tenant, on its own ledger); a tenant that fails is skipped with its outcome
        row and reason."""
        eligible = consent_gate.batch_eligibility(
            session, {t.organization_id for t in tenants}, self.config.task, self.settings
        )
        paused = restrictions.paused_for_training(session, (t.organization_id for t in tenants))
        # An open auto-block of the federation's own detectors first (its reason names the anomaly),
        # then the zero-trust policy over every other open anomaly of the organization.
        blocked = (
            self.watch.blocked(session, {t.organization_id for t in tenants})
            if self.watch is not None
            else {}
        )
        if self.zero_trust is not None:
            unblocked = {t.organization_id for t in tenants} - set(blocked) - set(paused)
            refused = node_admission.refusals(session, unblocked, self.zero_trust)
            for tenant in [t for t in tenants if t.organization_id in refused]:
                self._skip(session, server_round, tenant, REJECTED_POLICY, refused[tenant.organization_id])
                admission.skipped[tenant.name] = REJECTED_POLICY
            tenants = [t for t in tenants if t.organization_id not in refused]
        candidates = [
            t.organization_id
            for t in tenants
            if t.organization_id not in paused
            and t.organization_id not in blocked
            and eligible[t.organization_id].eligible
        ]
        refusals = self._budget_refusals(session, candidates)
        for tenant in sorted(tenants, key=lambda t: t.name):
            if tenant.organization_id in paused:  # the dead man's switch paused its training
                self._skip(session, server_round, tenant, REJECTED_PAUSED, restrictions.PAUSED_REASON)
                admission.skipped[tenant.name] = REJECTED_PAUSED
                continue
            if tenant.organization_id in blocked:  # an open auto-blocked security anomaly
                self._skip(session, server_round, tenant, REJECTED_INVALID, blocked[tenant.organization_id])
                admission.skipped[tenant.name] = REJECTED_INVALID
                continue
            verdict = eligible[tenant.organization_id]
            if not verdict.eligible:
                self._skip(session, server_round, tenant, REJECTED_CONSENT, verdict.reason or verdict.code)
                admission.skipped[tenant.name] = REJECTED_CONSENT
                continue
            reason = refusals.get(tenant.organization_id)
            if reason is not None:
                self._skip(session, server_round, tenant, REJECTED_BUDGET, reason)
                admission.skipped[tenant.name] = REJECTED_BUDGET
                continue
            admission.admitted[tenant.node_id] = tenant

    def _outside_population(self, session: Any, server_round: int, admission: Admission) -> None:
        """Central DP: a tenant trains only if it is charged the round's central event, i.e. is in
        the population (a consent change between the two reads could otherwise let one through)."""
        charged = {t.node_id for t in admission.population}
        for node_id, tenant in list(admission.admitted.items()):
            if node_id not in charged:
                del admission.admitted[node_id]
                reason = "not eligible when the round's central DP population was fixed"
                self._skip(session, server_round, tenant, REJECTED_CONSENT, reason)
                admission.skipped[tenant.name] = REJECTED_CONSENT

    def _eligible_population(self, session: Any, tenants: Iterable[Tenant]) -> list[Tenant]:
        """Who is eligible now, for the whole federation in set-based queries (no row is written
        for those who are not: they were not sampled): enough consenting users, and a budget delta
        no smaller than the run's in every unit the round charges."""
        tenants = list(tenants)
        consent = consent_gate.batch_eligibility(
            session, {t.organization_id for t in tenants}, self.config.task, self.settings
        )
        deltas = [
            self._budget_deltas(session, unit) for unit in sorted({e.unit for e in self.planned_events(0)})
        ]
        paused = restrictions.paused_for_training(session, (t.organization_id for t in tenants))
        return [
            t
            for t in tenants
            if consent[t.organization_id].eligible
            and t.organization_id not in paused
            and all(
                self.config.delta <= own.get(t.organization_id, self.policy.default_delta) for own in deltas
            )
        ]

    def _budget_deltas(self, session: Any, unit: str) -> dict[uuid.UUID, float]:
        """Every organization's own ``unit``-level budget delta for the task, in one query (a tenant
        without one is at the platform default): the delta rule of ``_budget_refusals`` for everyone."""
        rows = session.execute(
            select(PrivacyBudget.organization_id, PrivacyBudget.delta).where(
                PrivacyBudget.model_type == self.config.task,
                PrivacyBudget.unit == unit,
                PrivacyBudget.delta.is_not(None),
            )
        )
        return {org: float(delta) for org, delta in rows}

    def mark_offline(self, server_round: int, tenants: Iterable[Tenant]) -> None:
        """Bound tenants whose node is not connected this round: ``failed``, reason ``offline``
        (nothing instructed, nothing charged)."""
        tenants = sorted(tenants, key=lambda t: t.name)
        if not tenants:
            return

        def once() -> None:
            with transaction(self.engine) as session:
                for tenant in tenants:
                    self._skip(session, server_round, tenant, FAILED, OFFLINE)

        retry_transient(once, f"marking offline tenants of round {server_round}")

    def publish_completed(self, publish: Callable[[Any, FlRun], Any] | None) -> Any:
        """A run that completed but was never published (a crash between the two, before they
        shared a transaction) is published now; a published one is not started again."""
        with transaction(self.engine) as session:
            run = session.get(FlRun, self.run_id, with_for_update=True)
            assert run is not None
            published = session.scalar(
                select(FlPublishedModel.id).where(FlPublishedModel.run_id == run.id).limit(1)
            )
            if publish is None or published is not None:
                raise ConflictError(f"run '{run.name}' already completed; choose a new run name")
            log.warning("run %s completed but was never published; publishing it now", run.name)
            return publish(session, run)

    def _budget_refusals(self, session: Any, organization_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Why each tenant that may not take part may not: a run delta above its budget's, or a cap
        the round would pass (tenants absent from the result may). One budget query per unit.

        Delta belongs to the budget: a run whose delta is larger than a tenant's budget delta (or
        the platform default without a budget) would claim a weaker guarantee than the tenant
        accepted, so that tenant sits the run out with the reason; others go on.
        """
        by_unit: dict[str, list[DpEvent]] = {}
        for event in self.planned_events(0):
            by_unit.setdefault(event.unit, []).append(event)
        refusals: dict[uuid.UUID, str] = {}
        for unit, events in sorted(by_unit.items()):
            # All of a unit's events at once, with the ledger's accountant; units never mix.
            pending = [org for org in organization_ids if org not in refusals]
            if not pending:
                break
            projections = ledger.project_many(session, pending, self.config.task, events, policy=self.policy)
            for org, projection in projections.items():
                if self.config.delta > projection.delta:
                    refusals[org] = (
                        f"the run's delta {self.config.delta:g} is larger than this tenant's {unit}-level budget "
                        f"delta {projection.delta:g}; lower the run's delta or set the budget's"
                    )
                elif projection.exceeds:
                    refusals[org] = (
                        f"{unit}-level epsilon would reach {projection.epsilon_after:.4f} after this round, over "
                        f"the cap {projection.epsilon_cap:g} (spent {projection.epsilon_before:.4f}, "
                        f"delta {projection.delta:g})"
                    )
        return refusals

    # --- dispatch: charge before release --------------------------------------------------------

    def dispatch(
        self, server_round: int, chosen: Iterable[Tenant], population: Iterable[Tenant] = ()
    ) -> DispatchBatch:
        """Charge, then instruct: in one transaction, before any message leaves.

        Central DP (``population``: every admitted tenant) is charged first to every tenant of the
        population, sampled or not, since the round's aggregate is released whoever took part.
        Then each chosen tenant gets a consent snapshot, a contribution row (status
        ``dispatched``), the charge of exactly the instructed events (linked to the contribution)
        and an outcome row. A tenant whose charge is refused (a concurrent run spent its budget
        since admission) is not instructed: ``rejected_budget`` with the numbers. A later timeout,
        refusal, malformed reply or crash leaves the charge in place: the ledger can only
        over-charge, never under-charge. Retried on a transient database error: nothing leaves
        before the transaction commits, so a failed try released nothing.
        """
        chosen, population = list(chosen), list(population)
        return retry_transient(
            lambda: self._dispatch_once(server_round, chosen, population), f"dispatching round {server_round}"
        )

    def _dispatch_once(
        self, server_round: int, chosen: list[Tenant], population: list[Tenant]
    ) -> DispatchBatch:
        batch = DispatchBatch()
        chosen_ids = {t.node_id for t in chosen}
        everyone = {t.node_id: t for t in [*population, *chosen]}
        population_ids = {t.node_id for t in population}
        with transaction(self.engine) as session:
            self._check_lease(session)
            held = hold_organizations(session, (t.organization_id for t in everyone.values()))
            # A fixed lock order (organization, then unit) so concurrent runs cannot deadlock.
            instructed: list[Tenant] = []
            for tenant in sorted(everyone.values(), key=lambda t: t.organization_id):
                central_refusal: str | None = None
                if tenant.node_id in population_ids:
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
                        batch.central_charged.append(tenant)
                    except BudgetExceededError as exc:
                        central_refusal = str(exc)
                if tenant.node_id not in chosen_ids:
                    continue
                if central_refusal is not None:
                    self._skip(session, server_round, tenant, REJECTED_BUDGET, central_refusal, sampled=True)
                    batch.refused[tenant.name] = REJECTED_BUDGET
                    continue
                instructed.append(tenant)
            for tenant, dispatched in zip(
                instructed, self._dispatch_many(session, server_round, instructed), strict=True
            ):
                if isinstance(dispatched, Dispatch):
                    batch.dispatched[tenant.node_id] = dispatched
                else:
                    batch.refused[tenant.name] = REJECTED_BUDGET
            del held  # referenced until here: every validation above found its organization in memory
        return batch

    def _dispatch_many(self, session: Any, server_round: int, tenants: list[Tenant]) -> list[Dispatch | str]:
        """Snapshot, contribution row, charge, outcome row and instruction of each tenant (in
        organization order): a ``Dispatch``, or why its charge was refused. The rows are written
        in one statement per table and local DP's charges by one ``ledger.charge_many``."""
        if not tenants:
            return []
        unit = self.config.privacy_unit
        snapshots = [
            consent_gate.take_snapshot(session, t.organization_id, self.config.task) for t in tenants
        ]
        contribution_ids = self._new_contributions(session, server_round, tenants)
        local = self.local_event() if self.config.dp.local else None
        charged: list[ledger.ChargeResult | BudgetExceededError | None] = [None] * len(tenants)
        if local is not None:
            charged = list(
                ledger.charge_many(
                    session,
                    self.config.task,
                    [
                        ledger.Charge(t.organization_id, local, c)
                        for t, c in zip(tenants, contribution_ids, strict=True)
                    ],
                    server_round,
                    policy=self.policy,
                )
            )
        outcomes: list[dict[str, Any]] = []
        made: list[Dispatch | str] = []
        for tenant, snapshot, contribution_id, result in zip(
            tenants, snapshots, contribution_ids, charged, strict=True
        ):
            assert snapshot.id is not None
            dp_event: dict[str, Any] | None = None
            epsilon_after: float | None = None
            try:
                if isinstance(result, BudgetExceededError):
                    raise result
                if isinstance(result, ledger.ChargeResult):
                    assert local is not None
                    dp_event = {
                        "mechanism": local.mechanism,
                        "unit": local.unit,
                        "noise_multiplier": local.noise_multiplier,
                        "sample_rate": local.sample_rate,
                        "steps": local.steps,
                    }
                    epsilon_after, cap, delta = result.epsilon_after, result.epsilon_cap, result.delta
                    if self.watch is not None:
                        self.watch.charged(
                            session,
                            tenant.organization_id,
                            self.config.run_name,
                            server_round,
                            result.increment,
                        )
                else:  # no local charge tells the node its cap: read it (dp=off or central DP only)
                    cap, delta = ledger.cap_of(
                        session, tenant.organization_id, self.config.task, unit, policy=self.policy
                    )
                    if self.config.dp == DpMode.OFF:
                        epsilon_after = self._charge_non_private(
                            session, server_round, tenant, contribution_id
                        )
                        dp_event = {"mechanism": NonPrivateEvent.mechanism, "unit": unit}
            except BudgetExceededError as exc:
                self._update_row(
                    session, FederatedLearningContribution, contribution_id, {"status": REJECTED_BUDGET}
                )
                outcomes.append(
                    self._outcome_row(
                        server_round, tenant, REJECTED_BUDGET, str(exc), contribution_id, None, None
                    )
                )
                self._audit(session, server_round, tenant, contribution_id, REJECTED_BUDGET, str(exc))
                made.append(str(exc))
                continue
            outcome = self._outcome_row(
                server_round, tenant, DISPATCHED, None, contribution_id, dp_event, epsilon_after
            )
            outcomes.append(outcome)
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
                unit=unit,
                expected_batch_size=self._expected_batch_size(len(snapshot.user_ids)),
                epsilon_cap=cap,
                delta=delta,
                holdout_fraction=self.config.holdout_fraction,
            )
            # No audit record of its own: the charge's audit record names the contribution, and the
            # verdict appends one (a third record per tenant per round cost ~1 ms on the hot path).
            made.append(
                Dispatch(tenant, instruction, snapshot.id, contribution_id, outcome["id"], epsilon_after)
            )
        session.connection().execute(_INSERT_OUTCOME, outcomes)
        return made

    def _charge_non_private(
        self, session: Any, server_round: int, tenant: Tenant, contribution_id: uuid.UUID
    ) -> float:
        """A dp=off release is unbounded in every unit: epsilon +inf in each of the tenant's ledgers."""
        for unit in UNITS:
            linked = contribution_id if unit == self.config.privacy_unit else None
            ledger.charge(
                session,
                tenant.organization_id,
                self.config.task,
                NonPrivateEvent(unit),
                linked,
                server_round,
                policy=self.policy,
            )
        return math.inf

    def _expected_batch_size(self, consented_users: int) -> float:
        return self.config.expected_batch_size_for(consented_users)

    def _node_seed(self, server_round: int, tenant: Tenant) -> int:
        """A seed only in explicitly non-private runs (dp=off): with DP on, noise the server could
        regenerate would let it subtract the noise, so no seed is ever sent (and nodes ignore one)."""
        if self.config.seed == 0 or self.config.dp != DpMode.OFF:
            return 0
        return (
            self.config.seed * 1_000_003 + server_round * 7919 + int(tenant.organization_id.int % 100_003)
        ) % (2**62)

    # --- replies ------------------------------------------------------------------------------

    def judge(
        self,
        server_round: int,
        dispatch: Dispatch,
        report: TrainReport | None,
        update: Arrays | None,
        *,
        error: str | None,
        validator: UpdateValidator,
        reference: Arrays,
    ) -> Verdict:
        """``_judge_once``, retried on a transient database error (the verdict is written in one
        transaction, so a retry rewrites the same row; a checksum the failed try recorded as seen
        is forgotten first, or the retry would call the update a replay)."""
        claimed = (
            str(report.update_checksum).lower() if report is not None and report.update_checksum else None
        )
        known = claimed is not None and claimed in validator.seen

        def once() -> Verdict:
            return self._judge_once(
                server_round, dispatch, report, update, error=error, validator=validator, reference=reference
            )

        def undo() -> None:
            if claimed is not None and not known:
                validator.seen.discard(claimed)

        return retry_transient(once, f"judging {dispatch.tenant.name} in round {server_round}", undo)

    def _judge_once(
        self,
        server_round: int,
        dispatch: Dispatch,
        report: TrainReport | None,
        update: Arrays | None,
        *,
        error: str | None,
        validator: UpdateValidator,
        reference: Arrays,
    ) -> Verdict:
        """Decide one reply's status; a refusal is written at once, an acceptance with the round.

        Nothing is charged here: the instructed events were charged at dispatch, and stay charged
        whatever the reply (a less private report than instructed is rejected, not re-charged).

        A rejection or failure updates the contribution and outcome rows (and flags an outlier)
        in its own transaction, so the evidence stays even if the round never commits. An
        acceptance only reads (the consent re-check): its rows, snapshot use, audit record and
        hub event are written by ``commit_round`` in the transaction that commits the round, since
        an accepted update counts only in a committed round (a round that never commits is
        aborted on resume). The last reply of a round no longer waits for a commit of its own.
        """
        tenant, instruction = dispatch.tenant, dispatch.instruction
        with transaction(self.engine) as session:
            held = hold_organizations(session, [tenant.organization_id])
            verdict = self._decide(session, tenant, instruction, report, update, error, validator, reference)
            if verdict.status != ACCEPTED:
                self._check_lease(session)
                self._write_refusal(session, server_round, dispatch, report, verdict)
            del held  # referenced until here: the validations above found the organization in memory
        if verdict.status == ACCEPTED:
            checksum = report.update_checksum[:64] if report is not None and report.update_checksum else None
            self._accepted.setdefault(server_round, []).append(_Acceptance(dispatch, checksum))
        return Verdict(verdict.status, verdict.reason, dispatch.epsilon_after)

    def _write_refusal(
        self,
        session: Any,
        server_round: int,
        dispatch: Dispatch,
        report: TrainReport | None,
        verdict: Verdict,
    ) -> None:
        tenant = dispatch.tenant
        # Written by primary key, without loading the rows first (two statements a reply fewer).
        written: dict[str, Any] = {"status": verdict.status}
        if report is not None and report.update_checksum:
            written["gradient_checksum"] = report.update_checksum[:64]
        self._update_row(session, FederatedLearningContribution, dispatch.contribution_id, written)
        # An update too large, or a weight larger than the tenant can hold: flagged as an attacker would be.
        outlier = verdict.status == REJECTED_INVALID and (verdict.reason or "").startswith(
            ("norm_exceeded", "invalid_weight")
        )
        self._update_row(
            session,
            FlRoundOutcome,
            dispatch.outcome_id,
            {"status": verdict.status, "reason": verdict.reason, "outlier": outlier},
        )
        if self.watch is not None:
            self.watch.judged(
                session,
                tenant.organization_id,
                self.config.run_name,
                server_round,
                rejected_invalid=verdict.status == REJECTED_INVALID,
                outlier=outlier,
                reason=verdict.reason,
                excess=verdict.excess if outlier else None,
            )
        self._audit(session, server_round, tenant, dispatch.contribution_id, verdict.status, verdict.reason)

    @staticmethod
    def _update_row(session: Any, model: type[Any], row_id: uuid.UUID, values: Mapping[str, Any]) -> None:
        """``UPDATE`` one row by id; a row that is not there (it always is: dispatch wrote it in
        this run) is an error, not a silent no-op."""
        table = model.__table__
        statement = _update_by_id(table, tuple(values))
        done = session.execute(statement, {"row_id": row_id} | {f"new_{k}": v for k, v in values.items()})
        if done.rowcount != 1:
            raise ConflictError(f"{table.name} row {row_id} is missing; the round cannot be judged")

    def _decide(
        self,
        session: Any,
        tenant: Tenant,
        instruction: TrainInstruction,
        report: TrainReport | None,
        update: Arrays | None,
        error: str | None,
        validator: UpdateValidator,
        reference: Arrays,
    ) -> Verdict:
        if error is not None or report is None:
            return Verdict(FAILED, error or "no report in the reply")
        if report.organization_id != str(tenant.organization_id):
            return Verdict(
                REJECTED_INVALID,
                f"node {tenant.node_id} is bound to {tenant.organization_id} but claimed {report.organization_id}",
            )
        if not report.trained:
            return Verdict(REJECTED_BUDGET, f"node refused to train: {report.refusal}")
        if instruction.dp:
            problem = _dp_params_problem(instruction, report)
            if problem is not None:
                return Verdict(REJECTED_INVALID, f"{problem}; the instructed event stays charged")
        if not consent_gate.recheck(
            session, tenant.organization_id, self.config.task, report.consent_digest
        ) or (report.consent_digest != instruction.consent_digest):
            return Verdict(
                REJECTED_CONSENT_CHANGED, "consent changed since the snapshot this update was trained on"
            )
        if update is None:
            return Verdict(REJECTED_INVALID, "reply carried no weights")
        checked = validator.validate(
            update,
            reference=reference,
            claimed_checksum=report.update_checksum,
            weight=None if self.config.dp != DpMode.OFF else report.num_examples,
            max_weight=max(1, len(instruction.user_ids)) * MAX_RECORDS_PER_USER,
        )
        if not isinstance(checked, Accepted):
            return Verdict(REJECTED_INVALID, f"{checked.reason}: {checked.message}", excess=checked.excess)
        return Verdict(ACCEPTED, None)

    def _outcome_row(
        self,
        server_round: int,
        tenant: Tenant,
        status: str,
        reason: str | None,
        contribution_id: uuid.UUID,
        dp_event: dict[str, Any] | None,
        epsilon_after: float | None,
        *,
        sampled: bool = True,
    ) -> dict[str, Any]:
        return {
            "id": uuid.uuid4(),
            "run_id": self.run_id,
            "aggregation_round": server_round,
            "organization_id": tenant.organization_id,
            "tenant": tenant.name,
            "status": status,
            "sampled": sampled,
            "reason": reason,
            "contribution_id": contribution_id,
            "dp_event": dp_event,
            "epsilon_after": epsilon_after,
            "attempt": self.attempt,
            "outlier": False,
        }

    def _skip(
        self,
        session: Any,
        server_round: int,
        tenant: Tenant,
        status: str,
        reason: str,
        *,
        sampled: bool = False,
    ) -> None:
        [contribution_id] = self._new_contributions(session, server_round, [tenant], status=status)
        row = self._outcome_row(
            server_round, tenant, status, reason, contribution_id, None, None, sampled=sampled
        )
        session.connection().execute(_INSERT_OUTCOME, row)
        self._audit(session, server_round, tenant, contribution_id, status, reason)

    def _new_contributions(
        self,
        session: Any,
        server_round: int,
        tenants: list[Tenant],
        checksum: str = NO_UPDATE,
        status: str = DISPATCHED,
    ) -> list[uuid.UUID]:
        """Insert a contribution row for each tenant, in one statement; returns their ids. A Core
        insert on the session's connection: nothing reads the rows back as objects, and the ORM's
        flush cost ~1 ms a row."""
        ids = [uuid.uuid4() for _ in tenants]
        rows = [
            {
                "id": contribution_id,
                "organization_id": tenant.organization_id,
                "model_type": self.config.task,
                "contribution_type": self.task.contribution_type,
                "gradient_checksum": checksum,
                "contribution_weight": Decimal(0),
                "privacy_budget_consumed": Decimal(0),
                "aggregation_round": server_round,
                "status": status,
            }
            for tenant, contribution_id in zip(tenants, ids, strict=True)
        ]
        session.connection().execute(_INSERT_CONTRIBUTION, rows)
        return ids

    def _audit(
        self,
        session: Any,
        server_round: int,
        tenant: Tenant,
        contribution_id: uuid.UUID,
        status: str,
        reason: str | None,
    ) -> None:
        entry = self._audit_entry(server_round, tenant, contribution_id, status, reason)
        audit.append(
            session,
            organization_id=tenant.organization_id,
            action=entry.action,
            resource_type=entry.resource_type,
            resource_id=entry.resource_id,
            data=entry.data,
        )
        self._contribution_event(session, server_round, tenant, contribution_id, status)

    def _audit_entry(
        self, server_round: int, tenant: Tenant, contribution_id: uuid.UUID, status: str, reason: str | None
    ) -> audit.AuditEntry:
        """The audit record of a contribution's decision (the tenant's chain)."""
        return audit.AuditEntry(
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

    def _contribution_event(
        self, session: Any, server_round: int, tenant: Tenant, contribution_id: uuid.UUID, status: str
    ) -> None:
        """The hub hears of a decided contribution: accepted, or rejected with the status as its
        reason code (the free-text reason stays in the audit log: it may name a tenant or a node).
        ``failed`` (a node offline or erroring) and ``aborted`` are no decision and send nothing.

        Under central DP nothing is sent: the tenant is its unit of privacy, so whether a tenant
        took part in a round is what the DP protects (and what Poisson subsampling's amplification
        assumes secret). The hub is outside the trusted curator; the decision stays in the
        contribution rows and the audit log, which are the curator's."""
        if self.config.dp.central:
            return
        if status != ACCEPTED and not status.startswith("rejected"):
            return
        assert self.run_id is not None
        hub_events.append(
            session,
            event_type="accute.fl.contribution.accepted"
            if status == ACCEPTED
            else "accute.fl.contribution.rejected",
            organization_id=tenant.organization_id,
            payload={
                "contribution_id": contribution_id,
                "run_id": self.run_id,
                "model_type": self.config.task,
                "round": server_round,
                "status": status,
            },
            correlation_id=str(self.run_id),
        )

    # --- end of round -------------------------------------------------------------------------

    def commit_round(
        self,
        server_round: int,
        *,
        weights_checksum: str,
        weights: Mapping[uuid.UUID, float],
        seen: SeenChecksums,
        metric: float | None,
        outlier: Mapping[uuid.UUID, str] | None = None,
    ) -> None:
        """``_commit_round_once``, retried on a transient database error: a retry after a commit
        that did land (the acknowledgement was lost) finds the round committed with these weights
        and stops there."""
        retry_transient(
            lambda: self._commit_round_once(
                server_round,
                weights_checksum=weights_checksum,
                weights=weights,
                seen=seen,
                metric=metric,
                outlier=outlier,
            ),
            f"committing round {server_round}",
        )
        self._accepted.pop(server_round, None)

    def _commit_round_once(
        self,
        server_round: int,
        *,
        weights_checksum: str,
        weights: Mapping[uuid.UUID, float],
        seen: SeenChecksums,
        metric: float | None,
        outlier: Mapping[uuid.UUID, str] | None = None,
    ) -> None:
        """Close a round atomically: weights, summary and the resume point (charges were made at dispatch).

        Under the run's row lock, by the lease holder only, and only as the next round: a server
        that lost its lease, or a round another attempt already committed, writes nothing.
        ``weights`` are the shares the aggregator used per organization, of this attempt only.
        """
        with transaction(self.engine) as session:
            run = self._hold_lease(session)
            if run.last_completed_round == server_round and run.weights_checksum == weights_checksum:
                return  # this commit landed already (a retry after a lost acknowledgement)
            if run.last_completed_round != server_round - 1:
                raise ConflictError(
                    f"run '{run.name}' is at round {run.last_completed_round}; round {server_round} "
                    "cannot be committed twice or out of order"
                )
            self._write_acceptances(session, server_round, weights, outlier or {})
            run.last_completed_round = server_round
            run.weights_checksum = weights_checksum
            run.seen_checksums = sorted(seen)
            session.add(
                FlRoundSummary(
                    run_id=self.run_id,
                    aggregation_round=server_round,
                    metric_name=self.task.metric.name,
                    metric_value=finite(metric),
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
            assert self.run_id is not None
            hub_events.append(
                session,
                event_type="accute.fl.round.completed",
                organization_id=None,
                payload={
                    "run_id": self.run_id,
                    "model_type": self.config.task,
                    "round": server_round,
                    # The exact count of contributors is tenant-level membership under central DP.
                    "accepted": None if self.config.dp.central else len(weights),
                    "weights_checksum": weights_checksum,
                    "metric_name": self.task.metric.name,
                    "metric_value": finite(metric),
                },
                correlation_id=str(self.run_id),
            )

    def _write_acceptances(
        self,
        session: Any,
        server_round: int,
        weights: Mapping[uuid.UUID, float],
        outlier: Mapping[uuid.UUID, str],
    ) -> None:
        """The round's accepted replies (``_judge_once``), written in the round's commit: status,
        checksum and share of each contribution and outcome (two executemany by id), an aggregator
        outlier's flag, each snapshot's use, and the audit record and hub event of each acceptance."""
        accepted = self._accepted.get(server_round, [])
        if not accepted:
            return
        total = sum(weights.values())
        contributions: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        for acceptance in accepted:
            dispatch = acceptance.dispatch
            organization_id = dispatch.tenant.organization_id
            share = weights.get(organization_id, 0.0) / total if total > 0 else 0.0
            contributions.append(
                {
                    "row_id": dispatch.contribution_id,
                    "new_status": ACCEPTED,
                    "new_gradient_checksum": acceptance.checksum or NO_UPDATE,
                    "new_contribution_weight": Decimal(f"{share:.6f}"),
                }
            )
            flagged = outlier.get(organization_id)
            outcomes.append(
                {
                    "row_id": dispatch.outcome_id,
                    "new_status": ACCEPTED,
                    "new_reason": flagged,
                    "new_outlier": flagged is not None,
                }
            )
        session.execute(
            _update_by_id(_CONTRIBUTIONS, ("status", "gradient_checksum", "contribution_weight")),
            contributions,
        )
        session.execute(_update_by_id(_OUTCOMES, ("status", "reason", "outlier")), outcomes)
        # The snapshot uses and the acceptances' audit records: every chain in one write.
        then: dict[uuid.UUID, list[audit.AuditEntry]] = {}
        for a in accepted:
            entry = self._audit_entry(
                server_round, a.dispatch.tenant, a.dispatch.contribution_id, ACCEPTED, None
            )
            then.setdefault(a.dispatch.tenant.organization_id, []).append(entry)
        consent_gate.record_snapshot_uses(
            session,
            [(a.dispatch.tenant.organization_id, a.dispatch.snapshot_id) for a in accepted],
            server_round,
            run_id=self.config.run_name,
            then=then,
        )
        for acceptance in accepted:
            dispatch = acceptance.dispatch
            tenant = dispatch.tenant
            if self.watch is not None and tenant.organization_id in outlier:
                self.watch.judged(
                    session,
                    tenant.organization_id,
                    self.config.run_name,
                    server_round,
                    rejected_invalid=False,
                    outlier=True,
                    reason=outlier[tenant.organization_id],
                    by_aggregator=True,
                )
            self._contribution_event(session, server_round, tenant, dispatch.contribution_id, ACCEPTED)

    def record_metric(self, server_round: int, metric: float | None) -> None:
        """Store the round's metric in its summary. No metric writes nothing: the round's commit
        stored none already (a transaction a round saved in DP runs without a server test set)."""
        if finite(metric) is None:
            return
        retry_transient(lambda: self._record_metric_once(server_round, metric), "recording the metric")

    def _record_metric_once(self, server_round: int, metric: float | None) -> None:
        with transaction(self.engine) as session:
            summary = session.scalar(
                select(FlRoundSummary).where(
                    FlRoundSummary.run_id == self.run_id, FlRoundSummary.aggregation_round == server_round
                )
            )
            if summary is not None:
                summary.metric_value = finite(metric)


#: Waits between tries on a transient database error (about 30 s in all: a PostgreSQL restart).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


def is_transient(exc: BaseException) -> bool:
    """A lost connection or a database that is briefly unavailable, not a bug or a conflict
    (``schema.db.transaction`` reports an OperationalError as DatabaseUnavailableError)."""
    if isinstance(exc, OperationalError | DatabaseUnavailableError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_transient(operation: Callable[[], _T], what: str, undo: Callable[[], None] | None = None) -> _T:
    """Run ``operation`` (one transaction), again after each transient database error, with
    backoff; ``undo`` reverts in-memory state a failed try changed. Safe because every operation
    retried here is idempotent per round attempt."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return operation()
        except (DBAPIError, DatabaseUnavailableError) as exc:
            if delay is None or not is_transient(exc):
                raise
            if undo is not None:
                undo()
            log.warning("database error while %s (%s); retrying in %gs", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def finite(value: float | None) -> float | None:
    """A metric as stored and reported: NaN and ±inf (a diverged model) become NULL, never invalid JSON."""
    return None if value is None or not math.isfinite(value) else float(value)


def _dp_params_problem(instruction: TrainInstruction, report: TrainReport) -> str | None:
    """The node may be more private than asked (more noise, fewer steps, lower rate), never less,
    and never in another unit."""
    if report.unit != instruction.unit:
        return f"unit '{report.unit}' is not the instructed '{instruction.unit}'"
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
