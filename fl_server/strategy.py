"""The governed strategy: any Flower strategy, wrapped with consent, budget, validation and resume.

The wrapped strategy keeps its own job — choosing which nodes train and evaluate
(``configure_train`` / ``configure_evaluate``, here shown only the admitted nodes) and
aggregating evaluation metrics. The wrapper owns what Flower does not: it binds nodes to
organizations, admits tenants (``Governor.admit``), attaches each tenant's instruction, judges
every reply as it arrives and folds accepted updates into a streaming aggregate (memory does not
grow with the number of tenants), applies optional central DP, and commits each round so a killed
server resumes at the next round with the same weights. ``start`` is the only I/O loop.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from aggregation import CentralDPSum, ModelSpec, UpdateValidator, make_aggregator
from aggregation.flwr_adapter import arrays_from_record, record_from_arrays
from aggregation.weights_store import WeightsStore
from fl_client import protocol
from fl_client.protocol import NodeIdentity, TrainReport
from fl_server.governance import ACCEPTED, FAILED, Governor, Tenant, Verdict
from privacy import secure_noise

log = logging.getLogger("accute.fl_server")

Arrays = dict[str, np.ndarray]

#: How often ``_collect`` asks the grid for replies (Flower's own grids default to 0.1 s).
PULL_INTERVAL_S = 0.05


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


@dataclass
class RoundRecord:
    """What one round did, for the report."""

    server_round: int
    statuses: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    metric: float | None = None


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
    ) -> None:
        self.inner = inner
        self.governor = governor
        self.weights = weights
        self.config = governor.config
        self.on_round = on_round
        self.tenants: dict[int, Tenant] = {}
        self._participants: list[int] = []

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
        if self.config.seed:
            random.seed(self.config.seed)  # Flower's node sampling uses the module-level RNG
        state = self.governor.start_run()
        arrays = arrays_from_record(initial_arrays, copy=True)
        if state.weights_checksum:
            # Resume from the committed weights, in the model's own parameter order (the store's
            # file sorts names; nodes and checksums use the model's order).
            stored = self.weights.get(state.weights_checksum)
            arrays = {name: stored[name] for name in arrays}
        spec = ModelSpec.from_arrays(arrays)
        history: list[RoundRecord] = []
        for server_round in range(state.last_completed_round + 1, rounds + 1):
            self._identify(grid, timeout)
            record = RoundRecord(server_round)
            arrays = self._train_round(grid, server_round, arrays, spec, state.seen, record, timeout)
            record.metric = self._evaluate_round(grid, server_round, arrays, timeout)
            self.governor.record_metric(server_round, record.metric)
            history.append(record)
            if self.on_round is not None:
                self.on_round(record)
        self.governor.complete_run()
        return GovernedResult(arrays, history, rounds)

    def _identify(self, grid: Grid, timeout: float) -> None:
        """Ask unknown nodes which organization they speak for; wait for ``min_nodes`` first."""
        deadline = time.monotonic() + timeout
        while len(node_ids := list(grid.get_node_ids())) < self.config.min_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(node_ids)} of {self.config.min_nodes} nodes connected")
            time.sleep(0.2)
        unknown = [n for n in node_ids if n not in self.tenants]
        if not unknown:
            return
        messages = [
            Message(RecordDict({}), dst_node_id=node_id, message_type="query.identify", group_id="identify")
            for node_id in unknown
        ]
        for node_id, reply in _collect(grid, messages, timeout):
            if reply.has_error():
                log.warning("node %s did not identify: %s", node_id, reply.error.reason)
                continue
            identity = NodeIdentity.from_record(protocol.config_of(reply.content, protocol.IDENTITY))
            self.tenants[node_id] = self.governor.bind(node_id, identity)

    def _train_round(
        self,
        grid: Grid,
        server_round: int,
        arrays: Arrays,
        spec: ModelSpec,
        seen: Any,
        record: RoundRecord,
        timeout: float,
    ) -> Arrays:
        admission = self.governor.admit(server_round, self.tenants.values())
        record.skipped.update(admission.skipped)
        admitted_grid = AdmittedGrid(grid, admission.admitted)
        global_record = record_from_arrays(arrays, spec)
        # With nobody admitted the wrapped strategy would wait forever for nodes to sample.
        messages = (
            list(self.inner.configure_train(server_round, global_record, ConfigRecord(), admitted_grid))
            if admission.admitted
            else []
        )
        sampled: dict[int, tuple[Tenant, Any, Any]] = {}
        self._participants = [m.metadata.dst_node_id for m in messages]
        chosen = [admission.admitted[m.metadata.dst_node_id] for m in messages]
        instructions = self.governor.instruct(server_round, chosen)
        for message, tenant in zip(messages, chosen, strict=True):
            instruction, snapshot_id = instructions[tenant.node_id]
            sampled[tenant.node_id] = (tenant, instruction, snapshot_id)
            _attach(message, protocol.INSTRUCTION, instruction.to_record())

        validator = UpdateValidator(spec, max_norm=self.config.max_update_norm, seen=seen)
        central = (
            CentralDPSum(
                spec,
                clipping_norm=self.config.central_clip_norm,
                noise_multiplier=self.config.central_noise_multiplier,
                noise=secure_noise.gaussian,
            )
            if self.config.dp.central
            else None
        )
        aggregator = None if central is not None else make_aggregator(self.config.aggregator, spec)
        weights: dict[Any, float] = {}
        pending = {m.metadata.dst_node_id for m in messages}
        for node_id, reply in _collect(grid, messages, timeout):
            pending.discard(node_id)
            tenant, instruction, snapshot_id = sampled[node_id]
            verdict, update, report = self._judge(
                server_round, tenant, instruction, snapshot_id, reply, validator, arrays
            )
            record.statuses[tenant.name] = verdict.status
            if verdict.status != ACCEPTED or update is None or report is None:
                continue
            if central is not None:
                central.add({name: update[name].astype(np.float64) - arrays[name] for name in spec.names})
            else:
                assert aggregator is not None
                aggregator.add(update, weight=float(report.num_examples))
            weights[tenant.organization_id] = float(report.num_examples)
        for node_id in pending:  # timed out
            tenant, instruction, snapshot_id = sampled[node_id]
            self.governor.judge(
                server_round,
                tenant,
                instruction,
                snapshot_id,
                None,
                None,
                error=f"no reply within {timeout:g}s",
                validator=validator,
                reference=arrays,
            )
            record.statuses[tenant.name] = FAILED

        new_arrays = arrays
        if len(weights) >= self.config.min_accepted:
            if central is not None:
                mean_delta = central.result(denominator=max(len(messages), 1))
                new_arrays = {n: (arrays[n] + mean_delta[n]).astype(arrays[n].dtype) for n in spec.names}
            else:
                assert aggregator is not None
                new_arrays = {n: np.asarray(a, dtype=arrays[n].dtype) for n, a in aggregator.result().items()}
        else:
            log.warning(
                "round %s: %s accepted, %s needed; global model unchanged",
                server_round,
                len(weights),
                self.config.min_accepted,
            )
        checksum = self.weights.put(new_arrays, {"run": self.config.run_name, "round": str(server_round)})
        central_tenants = list(admission.admitted.values()) if central is not None else []
        self.governor.commit_round(
            server_round,
            weights_checksum=checksum,
            weights=weights,
            central_charged=central_tenants,
            seen=validator.seen,
            metric=None,
        )
        return new_arrays

    def _judge(
        self,
        server_round: int,
        tenant: Tenant,
        instruction: Any,
        snapshot_id: Any,
        reply: Message,
        validator: UpdateValidator,
        reference: Arrays,
    ) -> tuple[Verdict, Arrays | None, TrainReport | None]:
        report: TrainReport | None = None
        update: Arrays | None = None
        error: str | None = None
        if reply.has_error():
            error = f"node error: {reply.error.reason}"
        else:
            try:
                report = TrainReport.from_record(protocol.config_of(reply.content, protocol.REPORT))
                if protocol.ARRAYS in reply.content:
                    update = arrays_from_record(protocol.arrays_of(reply.content))
            except (KeyError, ValueError, TypeError) as exc:
                error = f"malformed reply: {exc}"
        verdict = self.governor.judge(
            server_round,
            tenant,
            instruction,
            snapshot_id,
            report,
            update,
            error=error,
            validator=validator,
            reference=reference,
        )
        return verdict, update, report

    def _evaluate_round(self, grid: Grid, server_round: int, arrays: Arrays, timeout: float) -> float | None:
        # The round's participants evaluate the new global model on their consented records: with a
        # thousand tenants, asking every one (most never trained) dominated the round and told little.
        if not self._participants:
            return None
        view = AdmittedGrid(grid, self._participants)
        messages = list(
            self.inner.configure_evaluate(server_round, record_from_arrays(arrays), ConfigRecord(), view)
        )
        for message in messages:
            tenant = self.tenants[message.metadata.dst_node_id]
            instruction = ConfigRecord(
                {
                    "task": self.config.task,
                    "organization_id": str(tenant.organization_id),
                    "server_round": server_round,
                }
            )
            _attach(message, protocol.INSTRUCTION, instruction)
        replies = [r for _, r in _collect(grid, messages, timeout) if not r.has_error() and _examples(r) > 0]
        if not replies:
            return None
        aggregated = self.inner.aggregate_evaluate(server_round, replies)
        if aggregated is None:
            return None
        value = aggregated.get(self.governor.task.metric.name)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)  # type: ignore[arg-type]


def _examples(reply: Message) -> int:
    value = protocol.metrics_of(reply.content).get(protocol.NUM_EXAMPLES, 0)
    return int(value) if isinstance(value, int | float) else 0


def _attach(message: Message, key: str, record: ConfigRecord) -> None:
    """Give one message its own record; strategies may share one RecordDict across all messages."""
    content = RecordDict(dict(message.content.items()))
    content[key] = record
    message.content = content


def _collect(grid: Grid, messages: list[Message], timeout: float) -> Iterable[tuple[int, Message]]:
    """Yield ``(destination node, reply)`` as replies arrive, until all came back or ``timeout`` passed.

    The node comes from the message the reply answers, not from the reply's source: the SuperLink
    answers for a node that went offline with an error reply from its own node id.
    """
    if not messages:
        return
    ids = list(grid.push_messages(messages))
    # A message the SuperLink did not take has id None: it is never answered, so it times out.
    node_of = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True) if mid is not None}
    pending = set(node_of)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            answered = reply.metadata.reply_to_message_id
            if answered not in pending:
                continue
            pending.discard(answered)
            yield node_of[answered], reply
        if pending:
            time.sleep(PULL_INTERVAL_S)
