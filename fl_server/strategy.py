"""The governed strategy: any Flower strategy, wrapped with consent, budget, validation and resume.

The wrapped strategy keeps its own job — choosing which nodes train and evaluate
(``configure_train`` / ``configure_evaluate``) and aggregating evaluation metrics. The wrapper owns
what Flower does not: it binds nodes to organizations (lazily outside central DP: only the nodes a
round samples, and their replacements, are asked who they are), samples first and then admits
only the sampled tenants (``Governor.admit``: a round costs what it samples, not what is
registered; a sampled tenant that fails the gate is replaced under local DP and dp=off, skipped
under central DP), charges and instructs them in one
transaction before any message leaves (``Governor.dispatch``), judges every reply as it arrives
and folds accepted updates into a streaming aggregate (memory does not grow with the number of
tenants), applies optional central DP, and commits each round so a killed server resumes at the
next round with the same weights. ``start`` is the only I/O loop.

Central DP as analysed (the accountant's Poisson-subsampled Gaussian with q = ``fraction``):

- tenants are Poisson-sampled here, each bound, connected tenant independently with probability
  ``fraction`` from the OS CSPRNG (Flower's fixed-size sampling would let one tenant's presence
  displace another's), and the inner strategy must train every node it is shown; a sampled tenant
  that fails the gate is skipped, never replaced (a replacement would raise the others' inclusion
  probability above the q they are charged for);
- every tenant eligible now (consent and delta rule, found for the whole federation in set-based
  queries) is charged the round's central event at dispatch, sampled or not;
- the noisy sum is divided by a public, fixed denominator (``fraction`` x charged tenants),
  never by the number of updates that arrived, and noise is added every round, even when fewer
  than ``min_accepted`` updates were accepted (or none): no released value is un-noised.

Aggregation weights: uniform in DP runs (a node's record count is private and not released);
record counts only in ``dp=off`` runs. Evaluation: every participant gets an ``EvalInstruction``
(its round's consent snapshot, the held-out fraction); in DP runs nodes keep their metric, and
the round's metric is None (no server-side test set yet) rather than a number nobody paid for.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from aggregation import CentralDPSum, ModelSpec, UpdateValidator, make_aggregator
from aggregation.flwr_adapter import arrays_from_record, record_from_arrays
from aggregation.ops import global_norm
from aggregation.weights_store import WeightsStore
from fl_client import protocol
from fl_client.protocol import UNIT_USER, EvalInstruction, NodeIdentity, TrainInstruction, TrainReport
from fl_server.config import DpMode
from fl_server.governance import (
    ACCEPTED,
    FAILED,
    MAX_REPLACEMENT_FACTOR,
    Admission,
    Dispatch,
    DispatchBatch,
    Governor,
    Tenant,
    Verdict,
    finite,
)
from fl_server.norm_bound import dp_update_bound
from privacy import secure_noise
from privacy.events import DpEvent, NonPrivateEvent

log = logging.getLogger("accute.fl_server")

Arrays = dict[str, np.ndarray]
_T = TypeVar("_T")

#: The global model's held-out metric on a server-side test set (None when it cannot be computed).
ServerEvaluate = Callable[[dict[str, np.ndarray]], float | None]

#: How often ``_collect`` asks the grid for replies (Flower's own grids default to 0.1 s).
PULL_INTERVAL_S = 0.05
#: Most identified nodes bound in one transaction (central DP identifies every node in round 1).
BIND_BATCH = 500


class AdmittedGrid(Grid):
    """A view of the grid that shows the wrapped strategy only the admitted nodes."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._node_ids = sorted(node_ids)

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        self._grid.set_run(run_id)  # type: ignore[arg-type]

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


#: The default update-norm bound (no ``max_update_norm``, no central clipping): this many times the
#: median norm of accepted updates, once at least ``MIN_NORMS_FOR_BOUND`` norms are known, and under
#: local DP never below what the reply's own instruction lets an honest node produce
#: (``_dp_bound``).
NORM_BOUND_FACTOR = 5.0
MIN_NORMS_FOR_BOUND = 3


def _norm_bound(norms: list[Any]) -> float | None:
    known = [float(n) for n in norms if n is not None]
    if len(known) < MIN_NORMS_FOR_BOUND:
        return None
    median = float(np.median(known))
    return NORM_BOUND_FACTOR * median if median > 0 else None


def _dp_bound(instruction: TrainInstruction, spec: ModelSpec) -> float | None:
    """Under local DP, the norm an honest node following ``instruction`` exceeds with probability
    at most ``norm_bound.FAILURE_PROBABILITY`` (``norm_bound.dp_update_bound``); None without DP.

    Public inputs only: the instruction's parameters and its consent snapshot's size, never the
    node's private record count. The node's units: at user level at most the snapshot's users (a
    true bound); at record level the public estimate its step size was derived from,
    ``expected_batch_size / sample_rate`` (``RunConfig.records_per_user`` x the snapshot's users
    unless configured). A node holding more records than that can exceed the clipped term: the
    median rule, kept alongside, covers it as it did before.
    """
    if not instruction.dp:
        return None
    if instruction.unit == UNIT_USER:
        units = float(max(len(instruction.user_ids), 1))
    else:
        units = instruction.expected_batch_size / instruction.sample_rate
    return dp_update_bound(
        noise_multiplier=instruction.noise_multiplier,
        clip_norm=instruction.clip_norm,
        steps=instruction.steps,
        lr=instruction.lr,
        sample_rate=instruction.sample_rate,
        expected_batch_size=instruction.expected_batch_size,
        max_units=units,
        dimension=spec.num_parameters,
    )


@dataclass(frozen=True)
class Parsed:
    """One train reply, parsed once: report, weights, transport error, and ||update - global||."""

    report: TrainReport | None
    update: Arrays | None
    error: str | None
    norm: float | None


@dataclass
class RoundRecord:
    """What one round did, for the report."""

    server_round: int
    statuses: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    metric: float | None = None
    #: Central DP: tenants charged this round (every admitted one) and the public denominator.
    central_population: int = 0
    central_denominator: float | None = None
    #: Tenants the consent gate and budget filter admitted, and the DP events each was charged.
    admitted: list[str] = field(default_factory=list)
    charged: dict[str, list[DpEvent]] = field(default_factory=dict)


@dataclass
class _Draw:
    """A round's sample with its nodes identified; not admitted, nothing charged or sent yet."""

    online: set[int]
    global_record: ArrayRecord
    #: Local DP and dp=off: the nodes sampling could draw, and the inner strategy's drafts for its sample.
    candidates: list[int] = field(default_factory=list)
    drafts: list[Message] = field(default_factory=list)
    #: The drafted nodes bound to a tenant.
    bound: dict[int, Tenant] = field(default_factory=dict)


@dataclass
class _Selection:
    """A round sampled, its nodes identified (``_select_round``)."""

    record: RoundRecord
    draw: _Draw


@dataclass
class _PreparedRound:
    """A round sampled, admitted, charged and instructed, whose messages have not left yet."""

    record: RoundRecord
    messages: list[Message]
    batch: DispatchBatch


@dataclass
class GovernedResult:
    arrays: Arrays
    rounds: list[RoundRecord]
    last_round: int


class GovernedStrategy(Strategy):
    """Wraps a Flower strategy (FedAvg by default) without forking it."""

    def __init__(
        self,
        inner: Strategy,
        governor: Governor,
        weights: WeightsStore,
        *,
        on_round: Callable[[RoundRecord], None] | None = None,
        server_evaluate: ServerEvaluate | None = None,
        publish: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self.inner = inner
        self.governor = governor
        self.weights = weights
        self.config = governor.config
        self.on_round = on_round
        self.server_evaluate = server_evaluate
        #: ``publish(session, run)``, run in the transaction that completes the run.
        self.publish = publish
        #: What ``publish`` returned (None when nothing was published).
        self.publication: Any = None
        self.tenants: dict[int, Tenant] = {}
        #: Nodes skipped at binding (unknown organization, one already bound…), with why.
        self.skipped_nodes: dict[int, str] = {}
        #: Identity queries sent so far (lazy identification asks only sampled nodes, once).
        self.identity_queries = 0
        #: Nodes asked to identify this round that did not (error, malformed, no reply).
        self._unanswered: set[int] = set()
        self._participants: dict[int, Dispatch] = {}
        #: Norms of the updates the last round accepted (the default norm bound's reference).
        self._last_round_norms: list[float] = []
        self._sampler = random.SystemRandom()

    # The Strategy interface: sampling and evaluation are the wrapped strategy's.
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        raise NotImplementedError("GovernedStrategy aggregates in start(), reply by reply")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.info("GovernedStrategy around %s", type(self.inner).__name__)
        self.inner.summary()

    # --- the round driver ---------------------------------------------------------------------

    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int | None = None,
        timeout: float | None = None,
    ) -> GovernedResult:
        rounds = num_rounds or self.config.rounds
        timeout = timeout or self.config.round_timeout_s
        if self.config.seed and self.config.dp == DpMode.OFF:
            # Flower's node sampling uses the module-level RNG; seeded only in non-private runs.
            random.seed(self.config.seed)
        state = self.governor.start_run()
        try:
            return self._drive(grid, initial_arrays, rounds, timeout, state)
        except BaseException:
            # A server stopping on an error gives its lease up, so a restart need not wait for it.
            try:
                self.governor.release_lease()
            except Exception:
                log.exception("could not release the run lease")
            raise

    def _drive(
        self, grid: Grid, initial_arrays: ArrayRecord, rounds: int, timeout: float, state: Any
    ) -> GovernedResult:
        arrays = arrays_from_record(initial_arrays, copy=True)
        if state.weights_checksum:
            # Resume from the committed weights, in the model's own parameter order (the store's
            # file sorts names; nodes and checksums use the model's order).
            stored = self.weights.get(state.weights_checksum)
            arrays = {name: stored[name] for name in arrays}
        if state.completed:
            self.publication = self.governor.publish_completed(self.publish)
            return GovernedResult(arrays, [], state.last_completed_round)
        spec = ModelSpec.from_arrays(arrays)
        history: list[RoundRecord] = []
        selected: _Selection | None = None
        for server_round in range(state.last_completed_round + 1, rounds + 1):
            if selected is None:
                # ``min_nodes`` gates the first round this server runs; later rounds go on with
                # the nodes that are online (bound tenants that are not: failed, reason offline).
                selected = self._select_round(grid, server_round, arrays, spec, timeout, wait=True)
            record = selected.record
            prepared = self._dispatch_round(grid, selected, timeout)
            arrays, commit = self._train_round(
                grid, server_round, arrays, spec, state.seen, prepared, timeout
            )
            # The round is committed while its evaluation runs (then the next round is selected):
            # the evaluation releases nothing the dispatch did not charge, and a round whose commit
            # fails is neither reported nor followed by another.
            node_metric, selected = self._evaluate_round(
                grid,
                server_round,
                arrays,
                timeout,
                self._meanwhile(
                    commit, grid, server_round + 1, arrays, spec, timeout, last=server_round >= rounds
                ),
            )
            # A server-side test set (public data no tenant holds) gives the headline metric, in
            # DP runs too: evaluating public data spends no one's privacy.
            # A diverged model's inf/NaN becomes None: stored as NULL, reported as null.
            record.metric = finite(
                self.server_evaluate(arrays) if self.server_evaluate is not None else node_metric
            )
            self.governor.record_metric(server_round, record.metric)
            history.append(record)
            if self.on_round is not None:
                self.on_round(record)
        self.publication = self.governor.complete_run(self.publish)
        return GovernedResult(arrays, history, rounds)

    def _meanwhile(
        self,
        commit: Callable[[], None],
        grid: Grid,
        server_round: int,
        arrays: Arrays,
        spec: ModelSpec,
        timeout: float,
        *,
        last: bool,
    ) -> Callable[[], _Selection | None]:
        """What ``_evaluate_round`` runs while it waits: the evaluated round's commit, then (unless
        it was the last) ``_select_round`` of ``server_round``."""

        def work() -> _Selection | None:
            commit()
            return None if last else self._select_round(grid, server_round, arrays, spec, timeout, wait=False)

        return work

    def _select_round(
        self, grid: Grid, server_round: int, arrays: Arrays, spec: ModelSpec, timeout: float, *, wait: bool
    ) -> _Selection:
        """Sample the round and identify the sampled nodes not bound yet (``_draw``).

        After round 1 this runs while the previous round's evaluation replies are awaited
        (``_evaluate_round``), so the identity queries of newly sampled nodes (a message round
        trip each round among thousands of tenants) overlap that wait instead of adding to every
        round. It reads no consent or budget and charges nothing: ``_dispatch_round`` admits,
        charges and sends once the evaluation is back, so a withdrawal, pause or block that lands
        during the evaluation still applies to the next round.
        """
        online = self._online(grid, timeout, wait=wait)
        self._unanswered = set()
        record = RoundRecord(server_round)
        return _Selection(
            record, self._draw(server_round, online, record_from_arrays(arrays, spec), grid, timeout)
        )

    def _dispatch_round(self, grid: Grid, selected: _Selection, timeout: float) -> _PreparedRound:
        """Admit the selected round (``_admit``: consent, policy, budget), then charge and instruct
        the admitted tenants whose node is still connected, in one transaction
        (``Governor.dispatch``), before any train message leaves.

        A node that left since it was sampled (during the previous round's evaluation) is failed,
        reason ``offline``, and not charged: budget is spent only on nodes that can still train.
        """
        record, draw = selected.record, selected.draw
        server_round = record.server_round
        selected_messages, admission = self._admit(server_round, draw, grid, timeout)
        self._mark_offline(server_round, draw.online, record)
        record.skipped.update(admission.skipped)
        connected = set(grid.get_node_ids())
        lost = [m.metadata.dst_node_id for m in selected_messages if m.metadata.dst_node_id not in connected]
        if lost:
            gone = [admission.admitted[n] for n in lost]
            self.governor.mark_offline(server_round, gone)
            record.statuses.update({t.name: FAILED for t in gone})
        messages = [m for m in selected_messages if m.metadata.dst_node_id in connected]
        chosen = [admission.admitted[m.metadata.dst_node_id] for m in messages]
        # Central DP: the population charged is the eligible tenants still connected, as when a
        # round's selection and dispatch were one step (an offline node is charged nothing).
        population = (
            [t for t in admission.population if t.node_id in connected] if self.config.dp.central else []
        )
        # Charge, then release: nothing is sent before the dispatch transaction committed.
        batch = self.governor.dispatch(server_round, chosen, population)
        record.statuses.update(batch.refused)
        record.admitted = sorted(t.name for t in admission.admitted.values())
        for tenant in batch.central_charged:
            record.charged.setdefault(tenant.name, []).append(self.governor.central_event())
        for dispatched in batch.dispatched.values():
            record.charged.setdefault(dispatched.tenant.name, []).extend(self._local_charges())
        messages = [m for m in messages if m.metadata.dst_node_id in batch.dispatched]
        for message in messages:
            _attach(
                message,
                protocol.INSTRUCTION,
                batch.dispatched[message.metadata.dst_node_id].instruction.to_record(),
            )
        return _PreparedRound(record, messages, batch)

    def _online(self, grid: Grid, timeout: float, *, wait: bool) -> set[int]:
        """The nodes connected now; with ``wait`` (the first round), once ``min_nodes`` are."""
        deadline = time.monotonic() + timeout
        while len(node_ids := list(grid.get_node_ids())) < self.config.min_nodes and wait:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(node_ids)} of {self.config.min_nodes} nodes connected")
            time.sleep(0.2)
        return set(node_ids)

    def _bind(self, grid: Grid, node_ids: Iterable[int], timeout: float) -> dict[int, Tenant]:
        """Ask the nodes of ``node_ids`` not bound or skipped yet which organization they speak
        for, and bind them; returns the tenants of ``node_ids`` that are bound now.

        A node that does not answer (an error, a malformed identity, no reply within
        ``timeout``) stays unknown: asked again the next time it is drawn, and in
        ``_unanswered`` for this round."""
        node_ids = list(node_ids)
        unknown = [n for n in node_ids if n not in self.tenants and n not in self.skipped_nodes]
        messages = [
            Message(RecordDict({}), dst_node_id=node_id, message_type="query.identify", group_id="identify")
            for node_id in unknown
        ]
        self.identity_queries += len(messages)
        self._unanswered.update(unknown)
        answered: list[tuple[int, NodeIdentity]] = []
        for node_id, reply in _collect(grid, messages, timeout):
            if reply.has_error():
                log.warning("node %s did not identify: %s", node_id, reply.error.reason)
                continue
            try:
                identity = NodeIdentity.from_record(protocol.config_of(reply.content, protocol.IDENTITY))
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("node %s sent a malformed identity: %s", node_id, exc)
                continue
            self._unanswered.discard(node_id)
            answered.append((node_id, identity))
            if len(answered) >= BIND_BATCH:  # central DP's first round: thousands of nodes
                self._bind_answered(answered)
                answered = []
        self._bind_answered(answered)
        return {n: self.tenants[n] for n in node_ids if n in self.tenants}

    def _bind_answered(self, answered: list[tuple[int, NodeIdentity]]) -> None:
        """Bind nodes that identified, in one transaction (``Governor.bind_many``), in reply order."""
        for (node_id, _), (tenant, reason) in zip(answered, self.governor.bind_many(answered), strict=True):
            if tenant is None:
                self.skipped_nodes[node_id] = reason or "skipped"
            else:
                self.tenants[node_id] = tenant

    def _mark_offline(self, server_round: int, online: set[int], record: RoundRecord) -> None:
        """Bound tenants whose node is not connected (or, bound by an earlier attempt, was asked
        this round and did not answer): ``failed``, reason ``offline``. Identification is lazy
        outside central DP, so an earlier attempt's binding whose node is connected and was not
        drawn is simply not sampled this round, like any other tenant."""
        offline = [t for n, t in self.tenants.items() if n not in online]
        offline += [
            t
            for t in self.governor.unseen_bindings()
            if t.node_id not in online or t.node_id in self._unanswered or self.config.dp.central
        ]
        self.governor.mark_offline(server_round, offline)
        record.statuses.update({t.name: FAILED for t in offline})

    def _train_round(
        self,
        grid: Grid,
        server_round: int,
        arrays: Arrays,
        spec: ModelSpec,
        seen: Any,
        prepared: _PreparedRound,
        timeout: float,
    ) -> tuple[Arrays, Callable[[], None]]:
        """Send the prepared round's train messages, judge and fold each reply; returns the new
        weights (already in the weights store) and the round's commit, for the caller to run."""
        record, messages, batch = prepared.record, prepared.messages, prepared.batch
        central_dp = self.config.dp.central
        self._participants = dict(batch.dispatched)

        validator = UpdateValidator(spec, max_norm=self.config.max_update_norm, seen=seen)
        central = (
            CentralDPSum(
                spec,
                clipping_norm=self.config.central_clip_norm,
                noise_multiplier=self.config.central_noise_multiplier,
                noise=secure_noise.gaussian,
            )
            if central_dp
            else None
        )
        aggregator = None if central is not None else make_aggregator(self.config.aggregator, spec)
        weights: dict[Any, float] = {}
        order: list[Any] = []  # organizations in the aggregator's add order
        accepted_norms: list[float] = []

        def settle(dispatch: Dispatch, parsed: Parsed, bound: float | None) -> None:
            if bound is not None:
                # Never below what this node's own instruction lets an honest node produce: a
                # small tenant's DP noise, divided by its small public batch, is far above the median.
                bound = max(bound, _dp_bound(dispatch.instruction, spec) or 0.0)
                validator.max_norm = bound if configured is None else min(configured, bound)
            verdict = self._judge(server_round, dispatch, parsed, validator, arrays)
            validator.max_norm = configured
            record.statuses[dispatch.tenant.name] = verdict.status
            report, update = parsed.report, parsed.update
            if verdict.status != ACCEPTED or update is None or report is None:
                return
            if parsed.norm is not None:
                accepted_norms.append(parsed.norm)
            # DP runs: uniform weights (a record count is private); dp=off may weight by counts.
            weight = float(report.num_examples) if self.config.dp == DpMode.OFF else 1.0
            if central is not None:
                central.add({name: update[name].astype(np.float64) - arrays[name] for name in spec.names})
            else:
                assert aggregator is not None
                aggregator.add(update, weight=weight)
            weights[dispatch.tenant.organization_id] = weight
            order.append(dispatch.tenant.organization_id)

        configured = self.config.max_update_norm
        # Without a configured bound and without central clipping, the server bounds update norms
        # itself: NORM_BOUND_FACTOR x the median norm of the updates accepted (this round and the
        # last), decided once MIN_NORMS_FOR_BOUND norms are known (earlier replies wait, at most
        # that many models in memory); under local DP, for each reply, at least the DP-aware bound
        # of its instruction (``_dp_bound``). A boosted update (x50) is rejected and flagged.
        guard = configured is None and central is None
        held: list[tuple[Dispatch, Parsed]] = []
        pending = {m.metadata.dst_node_id for m in messages}
        for node_id, reply in _collect(grid, messages, timeout):
            pending.discard(node_id)
            dispatch = batch.dispatched[node_id]
            parsed = self._parse(reply, spec, arrays)
            if not guard or parsed.norm is None:
                settle(dispatch, parsed, None)
                continue
            held.append((dispatch, parsed))
            bound = _norm_bound([*self._last_round_norms, *accepted_norms, *(p.norm for _, p in held)])
            if bound is None:
                continue
            for waiting, waiting_parsed in held:
                settle(waiting, waiting_parsed, bound)
            held.clear()
        if held:  # fewer norms than the bound needs: judged without a default bound
            bound = _norm_bound([*self._last_round_norms, *accepted_norms, *(p.norm for _, p in held)])
            for waiting, waiting_parsed in held:
                settle(waiting, waiting_parsed, bound)
        self._last_round_norms = list(accepted_norms) or self._last_round_norms
        for node_id in pending:  # timed out: the dispatch stays charged
            dispatch = batch.dispatched[node_id]
            self.governor.judge(
                server_round,
                dispatch,
                None,
                None,
                error=f"no reply within {timeout:g}s",
                validator=validator,
                reference=arrays,
            )
            record.statuses[dispatch.tenant.name] = FAILED

        new_arrays = arrays
        outlier: dict[Any, str] = {}
        if central is not None and batch.central_charged:
            # Always released, always noised, over a public denominator: fraction x admitted tenants.
            denominator = self.config.fraction * len(batch.central_charged)
            record.central_population = len(batch.central_charged)
            record.central_denominator = denominator
            mean_delta = central.result(denominator=denominator)
            new_arrays = {n: (arrays[n] + mean_delta[n]).astype(arrays[n].dtype) for n in spec.names}
        elif central is None and len(weights) >= self.config.min_accepted:
            assert aggregator is not None
            new_arrays = {n: np.asarray(a, dtype=arrays[n].dtype) for n, a in aggregator.result().items()}
            # Record the shares the aggregator actually used (Krum: the selected only; median and
            # trimmed mean: equal), and flag what a robust aggregator found far from the others.
            weights = dict(zip(order, aggregator.used_weights(), strict=True))
            outliers = getattr(aggregator, "outliers", None)
            if outliers is not None:
                for index in outliers():
                    outlier[order[index]] = (
                        f"outlier: {self.config.aggregator} found this update far from the round's others"
                    )
        else:
            log.warning(
                "round %s: %s accepted, %s needed; global model unchanged",
                server_round,
                len(weights),
                self.config.min_accepted,
            )
        checksum = self.weights.put(new_arrays, {"run": self.config.run_name, "round": str(server_round)})

        def commit() -> None:
            self.governor.commit_round(
                server_round,
                weights_checksum=checksum,
                weights=weights,
                seen=validator.seen,
                metric=None,
                outlier=outlier,
            )

        return new_arrays, commit

    def _draw(
        self, server_round: int, online: set[int], global_record: ArrayRecord, grid: Grid, timeout: float
    ) -> _Draw:
        """Sample first, then identify only the sampled nodes (``_admit`` gates them).

        Local DP and dp=off (lazy identification): the wrapped strategy samples among the
        connected nodes not skipped at binding, bound or not (Flower's fixed-size sample); only
        the sampled nodes not bound yet are asked who they are (``_bind``), so a round among
        10,000 nodes asks at most its sample and replacements, and a node is asked once.
        ``fraction`` applies to the connected nodes not skipped at binding (nodes not asked yet
        included).

        Central DP: every connected node is identified (bound nodes are not asked again); its
        tenants are Poisson-sampled in ``_admit``. Identifying only a Poisson sample of node ids
        would not be the sampling the accountant assumes: an organization that several nodes
        name (twins, or a node re-registered under a new id) would be drawn once per node until
        one is bound (inclusion up to 1 - (1 - q)^k > q), and the population charged the central
        event, whose size is the public denominator, must be every tenant that could have been
        sampled, which only the identities of all connected nodes tell.
        """
        if self.config.dp.central:
            self._bind(grid, online, timeout)
            return _Draw(online, global_record)
        candidates = [n for n in online if n not in self.skipped_nodes]
        if not candidates:
            return _Draw(online, global_record)
        drafts = list(
            self.inner.configure_train(
                server_round, global_record, ConfigRecord(), AdmittedGrid(grid, candidates)
            )
        )
        bound = self._bind(grid, [m.metadata.dst_node_id for m in drafts], timeout)
        return _Draw(online, global_record, candidates, drafts, bound)

    def _admit(
        self, server_round: int, draw: _Draw, grid: Grid, timeout: float
    ) -> tuple[list[Message], Admission]:
        """Gate the drawn tenants (``Governor.admit``): the round's train messages and admission.

        Local DP and dp=off: a sampled node that did not identify, and a sampled tenant that fails
        the gate, is replaced by nodes drawn uniformly from those not yet tried (identified as
        they are drawn), so the round keeps its size; at most ``MAX_REPLACEMENT_FACTOR`` x the
        sample size nodes are drawn in all.

        Central DP: Poisson sampling (q = ``fraction``, CSPRNG) over the bound, connected tenants.
        A sampled tenant that fails the gate is skipped, never replaced (inclusion stays at most
        q); the central event is charged to the population the governor finds eligible now.
        """
        online, global_record = draw.online, draw.global_record
        if self.config.dp.central:
            # In node order: the draws do not depend on the order nodes answered the identity query.
            present = {n: self.tenants[n] for n in sorted(self.tenants) if n in online}
            if not present:
                return [], Admission()
            sampled = self._poisson_sample(present)
            admission = self.governor.admit(server_round, sampled.values(), population=present.values())
            shown = admission.admitted
            messages = (
                list(
                    self.inner.configure_train(
                        server_round, global_record, ConfigRecord(), AdmittedGrid(grid, shown)
                    )
                )
                if shown
                else []
            )
            if {m.metadata.dst_node_id for m in messages} != set(shown):
                raise RuntimeError(
                    "central DP samples tenants itself (Poisson, q = fraction): the inner strategy must "
                    "train every node it is shown; build it with fraction_train=1.0"
                )
            return messages, admission
        candidates, drafts, bound = draw.candidates, draw.drafts, draw.bound
        if not candidates:
            return [], Admission()
        drafted = {m.metadata.dst_node_id: m for m in drafts}
        chosen = [bound[n] for n in drafted if n in bound]
        reserve = _LazyReserve(
            [n for n in sorted(candidates) if n not in drafted],
            self._replacement_rng(server_round),
            lambda nodes: self._bind(grid, nodes, timeout),
            limit=MAX_REPLACEMENT_FACTOR * len(drafted),
        )
        # Sampled nodes that did not identify are replaced before the gate, as failing tenants are.
        chosen += reserve.take(len(drafted) - len(chosen))
        admission = self.governor.admit(server_round, chosen, reserve=reserve.take)
        messages = [m for n, m in drafted.items() if n in admission.admitted]
        if drafts:
            template = drafts[0]
            messages += [
                Message(template.content, dst_node_id=n, message_type=template.metadata.message_type)
                for n in admission.admitted
                if n not in drafted
            ]
        return messages, admission

    def _replacement_rng(self, server_round: int) -> random.Random:
        """The OS CSPRNG; a seeded one only in a seeded dp=off run (reproducible, like its sampling)."""
        if self.config.seed and self.config.dp == DpMode.OFF:
            return random.Random(f"{self.config.seed}:{server_round}:replacements")
        return self._sampler

    def _local_charges(self) -> list[DpEvent]:
        """The local events one dispatch charged (``Governor._dispatch_one``), in the run's unit."""
        if self.config.dp.local:
            return [self.governor.local_event()]
        if self.config.dp == DpMode.OFF:
            return [NonPrivateEvent(self.config.privacy_unit)]
        return []

    def _poisson_sample(self, admitted: dict[int, Tenant]) -> dict[int, Tenant]:
        """Each bound, connected tenant independently with probability ``fraction`` (CSPRNG): the sampling the
        central accountant's q assumes."""
        fraction = self.config.fraction
        return {n: t for n, t in admitted.items() if fraction >= 1.0 or self._sampler.random() < fraction}

    @staticmethod
    def _parse(reply: Message, spec: ModelSpec, reference: Arrays) -> Parsed:
        """The reply's report and weights, and the update's norm when it can be computed."""
        if reply.has_error():
            return Parsed(None, None, f"node error: {reply.error.reason}", None)
        try:
            report = TrainReport.from_record(protocol.config_of(reply.content, protocol.REPORT))
            update = (
                arrays_from_record(protocol.arrays_of(reply.content))
                if protocol.ARRAYS in reply.content
                else None
            )
        except (KeyError, ValueError, TypeError) as exc:
            return Parsed(None, None, f"malformed reply: {exc}", None)
        norm: float | None = None
        if update is not None and spec.mismatch(update) is None:
            value = global_norm({name: update[name] for name in spec.names}, reference)
            norm = value if math.isfinite(value) else None
        return Parsed(report, update, None, norm)

    def _judge(
        self,
        server_round: int,
        dispatch: Dispatch,
        parsed: Parsed,
        validator: UpdateValidator,
        reference: Arrays,
    ) -> Verdict:
        return self.governor.judge(
            server_round,
            dispatch,
            parsed.report,
            parsed.update,
            error=parsed.error,
            validator=validator,
            reference=reference,
        )

    def _evaluate_round(
        self,
        grid: Grid,
        server_round: int,
        arrays: Arrays,
        timeout: float,
        meanwhile: Callable[[], _Selection | None] | None = None,
    ) -> tuple[float | None, _Selection | None]:
        """The round's node metric, and what ``meanwhile`` (the round's commit and the next round's
        selection) returned, run after the evaluate messages left and before their replies are
        collected."""
        # The round's participants evaluate the new global model on their held-out consented users:
        # with a thousand tenants, asking every one (most never trained) dominated the round.
        if not self._participants:
            return None, meanwhile() if meanwhile is not None else None
        view = AdmittedGrid(grid, self._participants)
        messages = list(
            self.inner.configure_evaluate(server_round, record_from_arrays(arrays), ConfigRecord(), view)
        )
        private = self.config.dp != DpMode.OFF
        for message in messages:
            dispatch = self._participants[message.metadata.dst_node_id]
            instruction = EvalInstruction(
                run_id=self.config.run_name,
                server_round=server_round,
                task=self.config.task,
                organization_id=str(dispatch.tenant.organization_id),
                user_ids=dispatch.instruction.user_ids,
                dp=private,
                holdout_fraction=self.config.holdout_fraction,
            )
            _attach(message, protocol.INSTRUCTION, instruction.to_record())
        sent = _Sent(grid, messages, timeout)
        try:
            selected = meanwhile() if meanwhile is not None else None
        finally:
            # The evaluation is collected even when the next round could not be selected.
            replies = [r for _, r in sent.replies() if not r.has_error()]
        return self._node_metric(server_round, replies, private), selected

    def _node_metric(self, server_round: int, replies: list[Message], private: bool) -> float | None:
        if private:
            # Nodes release no metric in DP runs; whatever a node sends anyway is neither stored
            # nor charged. Without a server-side test set the round has no metric.
            return None
        replies = [r for r in replies if _examples(r) > 0]
        if not replies:
            return None
        aggregated = self.inner.aggregate_evaluate(server_round, replies)
        if aggregated is None:
            return None
        value = aggregated.get(self.governor.task.metric.name)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)  # type: ignore[arg-type]


class _LazyReserve:
    """Replacement candidates: untried nodes in a uniformly random order, identified only when drawn.

    ``take(n)`` returns up to ``n`` bound tenants, drawing (and identifying, ``bind``) as many
    nodes as it takes to find them, at most ``limit`` nodes in all; empty when none is left.
    """

    def __init__(
        self,
        nodes: list[int],
        rng: random.Random,
        bind: Callable[[list[int]], dict[int, Tenant]],
        *,
        limit: int,
    ) -> None:
        self._order = _draws(nodes, rng)
        self._bind = bind
        self._left = limit

    def take(self, count: int) -> list[Tenant]:
        found: list[Tenant] = []
        while len(found) < count and self._left > 0:
            nodes = list(itertools.islice(self._order, min(count - len(found), self._left)))
            if not nodes:
                break
            self._left -= len(nodes)
            bound = self._bind(nodes)
            found += [bound[n] for n in nodes if n in bound]
        return found


def _draws(pool: list[_T], rng: random.Random) -> Iterator[_T]:
    """``pool`` in a uniformly random order, drawn lazily (a partial Fisher-Yates shuffle): a few
    replacements cost a few draws, not a shuffle of the whole federation."""
    for end in range(len(pool), 0, -1):
        pick = rng.randrange(end)
        pool[pick], pool[end - 1] = pool[end - 1], pool[pick]
        yield pool[end - 1]


def _examples(reply: Message) -> int:
    try:
        value = protocol.metrics_of(reply.content).get(protocol.NUM_EXAMPLES, 0)
    except (KeyError, ValueError):
        return 0
    return int(value) if isinstance(value, int | float) else 0


def _attach(message: Message, key: str, record: ConfigRecord) -> None:
    """Give one message its own record; strategies may share one RecordDict across all messages."""
    content = RecordDict(dict(message.content.items()))
    content[key] = record
    message.content = content


def _collect(grid: Grid, messages: list[Message], timeout: float) -> Iterable[tuple[int, Message]]:
    """Yield ``(destination node, reply)`` as replies arrive, until all came back or ``timeout`` passed."""
    if messages:
        yield from _Sent(grid, messages, timeout).replies()


class _Sent:
    """Messages pushed now, whose replies ``replies()`` collects later (the server may work meanwhile)."""

    def __init__(self, grid: Grid, messages: list[Message], timeout: float) -> None:
        self.grid = grid
        ids = list(grid.push_messages(messages)) if messages else []
        # A message the SuperLink did not take has id None: it is never answered, so it times out.
        # The node comes from the message the reply answers, not from the reply's source: the
        # SuperLink answers for a node that went offline with an error reply from its own node id.
        self.node_of = {
            mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True) if mid is not None
        }
        self.deadline = time.monotonic() + timeout

    def replies(self) -> Iterator[tuple[int, Message]]:
        """``(destination node, reply)`` as replies arrive, until all came back or the deadline passed.

        Pulls at least once: when the server worked past the deadline meanwhile (the next round's
        identity queries to nodes that never answer), the replies that did arrive still count.
        """
        pending = set(self.node_of)
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                answered = reply.metadata.reply_to_message_id
                if answered not in pending:
                    continue
                pending.discard(answered)
                yield self.node_of[answered], reply
            if not pending or time.monotonic() >= self.deadline:
                return
            time.sleep(PULL_INTERVAL_S)
