"""The tenant node: a Flower ClientApp that trains only on consented records, under its own budget.

A node is configured by its SuperNode's node config (deployment: ``organization-id``, ``tenant``,
``data-source`` … and optionally ``epsilon-cap``, ``delta``, ``holdout-key``, ``state-dir``) or, in a
simulation, by a manifest (run config ``manifest`` or ``ACCUTE_FL_MANIFEST``) that maps Flower's
``partition-id`` to the same keys.

What leaves a node in a DP run (invariant 9): the update, normalised by the instruction's public
``expected_batch_size``, and the DP parameters it used. Not its record count (``num_examples`` is
0), not an evaluation metric (it stays in the node's state and ``state-dir``), and no noise the
server could know (the instruction's ``seed`` is ignored; sampling and noise are CSPRNG draws).

Users: the node trains on the instruction's consent snapshot minus its held-out users
(``fl_client.holdout``, keyed by ``holdout-key`` or else the organization id), and evaluates only on
the held-out consented users, so a metric never includes a record the model trained on.

Two behaviours are Flower mods, so they wrap every train call the same way:
- ``budget_guard_mod`` (always on): the node keeps its own privacy ledger per (model type, unit of
  privacy), in the Context state and, with ``state-dir``, on disk. Before training it records the
  instructed event (charge before release) and refuses when its own ε (RDP, at the instruction's
  δ) would pass the instruction's ``epsilon_cap``. Node config ``epsilon-cap`` / ``delta``
  override the instruction's values, so an operator can hold the node to a stricter budget than
  the server's — or to any budget, whatever the server believes.
- ``checksum_mod``: stamps the reply's report with the SHA-256 of the weights actually sent.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from aggregation.checksum import update_checksum
from aggregation.flwr_adapter import record_from_arrays
from fl_client import node_ledger, protocol
from fl_client.dp_training import evaluate, train
from fl_client.holdout import split_users
from fl_client.protocol import EvalInstruction, NodeIdentity, TrainInstruction, TrainReport
from fl_client.tasks import get_task
from fl_client.tasks.data_sources import DataSource, source_from_config
from privacy import accounting
from privacy.events import DpSgdEvent
from schema.errors import InvalidInputError

MANIFEST_ENV = "ACCUTE_FL_MANIFEST"
LEDGER_KEY = "accute-node-ledger"
EVALUATIONS_KEY = "accute-node-evaluations"
CONSENT_KEY = "accute-node-consent"


@dataclass(frozen=True)
class NodeSetup:
    identity: NodeIdentity
    data: Mapping[str, Any]
    #: Node-config overrides of the instruction's cap and delta (None: take the instruction's).
    epsilon_cap: float | None
    delta: float | None
    state_dir: Path | None
    #: Key of the held-out split (node config ``holdout-key``; None: the organization id).
    holdout_key: str | None = None

    @property
    def split_key(self) -> str:
        return self.holdout_key or self.identity.organization_id


@cache
def _manifest(path: str) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def _optional_float(config: Mapping[str, Any], key: str) -> float | None:
    value = config.get(key)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"node config '{key}' is {value!r}, not a number") from None


def resolve_node(context: Context) -> NodeSetup:
    """Who this node is and where its data lives, from node config or the simulation manifest."""
    config: Mapping[str, Any] = dict(context.node_config)
    if protocol.NODE_ORGANIZATION not in config:
        manifest_path = str(
            context.run_config.get(protocol.RUN_MANIFEST, "") or os.environ.get(MANIFEST_ENV, "")
        )
        if not manifest_path:
            raise RuntimeError(
                "node config has no 'organization-id' and no manifest is set; start the SuperNode with "
                "--node-config \"organization-id='…' tenant='…' data-source='csv' data-path='…'\""
            )
        tenants = _manifest(manifest_path)["tenants"]
        config = tenants[int(config["partition-id"])]
    return NodeSetup(
        identity=NodeIdentity(
            str(config[protocol.NODE_ORGANIZATION]), str(config.get(protocol.NODE_TENANT, ""))
        ),
        data=config,
        epsilon_cap=_optional_float(config, protocol.NODE_EPSILON_CAP),
        delta=_optional_float(config, protocol.NODE_DELTA),
        state_dir=Path(str(config[protocol.NODE_STATE_DIR])) if config.get(protocol.NODE_STATE_DIR) else None,
        holdout_key=str(config[protocol.NODE_HOLDOUT_KEY]) if config.get(protocol.NODE_HOLDOUT_KEY) else None,
    )


# --- the node's own ledger ---------------------------------------------------------------------


def _state_rows(context: Context, record_key: str, key: str) -> list[dict[str, Any]]:
    if record_key in context.state and key in context.state[record_key]:
        return list(json.loads(str(protocol.config_of(context.state, record_key)[key])))
    return []


def _set_state_rows(context: Context, record_key: str, key: str, rows: list[dict[str, Any]]) -> None:
    record = protocol.config_of(context.state, record_key) if record_key in context.state else ConfigRecord()
    record[key] = json.dumps(rows)
    context.state[record_key] = record


def ledger_rows(context: Context, setup: NodeSetup, task: str, unit: str) -> list[dict[str, Any]]:
    """This node's ledger of (task, unit): the state-dir file (survives restarts) or the Context state
    (survives rounds), whichever holds more events — a lost file must not erase what was spent."""
    in_state = _state_rows(context, LEDGER_KEY, f"{task}/{unit}")
    if setup.state_dir is None:
        return in_state
    on_disk = node_ledger.load_ledger(setup.state_dir, setup.identity.organization_id, task, unit)
    return on_disk if len(on_disk) >= len(in_state) else in_state


def node_events(
    context: Context, setup: NodeSetup, task: str, unit: str = protocol.UNIT_RECORD
) -> list[DpSgdEvent]:
    """The DP-SGD events this node has been instructed to run for (task, unit)."""
    return [
        DpSgdEvent(r["noise_multiplier"], r["sample_rate"], int(r["steps"]))
        for r in ledger_rows(context, setup, task, unit)
    ]


def _save_rows(context: Context, setup: NodeSetup, task: str, unit: str, rows: list[dict[str, Any]]) -> None:
    _set_state_rows(context, LEDGER_KEY, f"{task}/{unit}", rows)
    if setup.state_dir is not None:
        node_ledger.save_ledger(setup.state_dir, setup.identity.organization_id, task, unit, rows)


def _charge(context: Context, setup: NodeSetup, instruction: TrainInstruction) -> str | None:
    """Record the instructed DP-SGD event in the node's ledger, or say why the node refuses it."""
    cap = setup.epsilon_cap if setup.epsilon_cap is not None else instruction.epsilon_cap
    delta = setup.delta if setup.delta is not None else instruction.delta
    if instruction.unit not in protocol.LOCAL_UNITS:
        return (
            f"unknown unit of privacy {instruction.unit!r}; this node runs {', '.join(protocol.LOCAL_UNITS)}"
        )
    if math.isnan(cap) or cap <= 0:
        return f"epsilon cap {cap} is not a positive number"
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        return f"delta {delta} is not in (0, 1)"
    if not (math.isfinite(instruction.expected_batch_size) and instruction.expected_batch_size > 0):
        return f"expected batch size {instruction.expected_batch_size} is not a positive number"
    try:
        event = DpSgdEvent(instruction.noise_multiplier, instruction.sample_rate, instruction.steps)
    except InvalidInputError as exc:
        return f"DP parameters refused: {exc}"
    rows = ledger_rows(context, setup, instruction.task, instruction.unit)
    history = [DpSgdEvent(r["noise_multiplier"], r["sample_rate"], int(r["steps"])) for r in rows]
    after = accounting.epsilon([*history, event], delta)
    if after > cap:
        return (
            f"node's own epsilon ({instruction.unit} level) would reach {after:.4f}, over its cap {cap:g} "
            f"at delta {delta:g}"
        )
    row = {
        "run_id": instruction.run_id,
        "server_round": instruction.server_round,
        "unit": instruction.unit,
        "noise_multiplier": instruction.noise_multiplier,
        "sample_rate": instruction.sample_rate,
        "steps": instruction.steps,
        "clip_norm": instruction.clip_norm,
        "expected_batch_size": instruction.expected_batch_size,
        "delta": delta,
        "epsilon": after,
        "epsilon_cap": cap,
        "time": node_ledger.now_iso(),
    }
    _save_rows(context, setup, instruction.task, instruction.unit, [*rows, row])
    return None


def _record_non_private(context: Context, setup: NodeSetup, instruction: TrainInstruction) -> None:
    """A non-private update is no DP event, but the node's ledger still shows it: ε = ∞, its own unit."""
    unit = node_ledger.NON_PRIVATE
    rows = ledger_rows(context, setup, instruction.task, unit)
    row = {
        "run_id": instruction.run_id,
        "server_round": instruction.server_round,
        "unit": unit,
        "steps": instruction.steps,
        "sample_rate": instruction.sample_rate,
        "epsilon": math.inf,
        "time": node_ledger.now_iso(),
    }
    _save_rows(context, setup, instruction.task, unit, [*rows, row])


def budget_guard_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Charge the instructed event to the node's own ledger before training, or refuse it over the cap."""
    if protocol.INSTRUCTION not in msg.content:
        return call_next(msg, context)
    instruction = TrainInstruction.from_record(protocol.config_of(msg.content, protocol.INSTRUCTION))
    setup = resolve_node(context)
    if instruction.organization_id != setup.identity.organization_id:
        return _refusal(msg, instruction, "instruction addressed to another organization")
    if not instruction.dp:
        _record_non_private(context, setup, instruction)
        return call_next(msg, context)
    refusal = _charge(context, setup, instruction)
    if refusal is not None:
        return _refusal(msg, instruction, refusal)
    return call_next(msg, context)


def checksum_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Stamp the report with the checksum of exactly the weights in the reply."""
    reply = call_next(msg, context)
    if reply.has_error() or protocol.ARRAYS not in reply.content or protocol.REPORT not in reply.content:
        return reply
    arrays = {name: array.numpy() for name, array in protocol.arrays_of(reply.content).items()}
    report = protocol.config_of(reply.content, protocol.REPORT)
    report["update_checksum"] = update_checksum(arrays)
    return reply


def _refusal(msg: Message, instruction: TrainInstruction, why: str) -> Message:
    report = TrainReport(
        organization_id=instruction.organization_id,
        consent_digest=instruction.consent_digest,
        update_checksum="",
        num_examples=0,
        trained=False,
        refusal=why,
        noise_multiplier=0.0,
        sample_rate=0.0,
        steps=0,
        clip_norm=0.0,
        unit="",
    )
    return Message(RecordDict({protocol.REPORT: report.to_record()}), reply_to=msg)


def kept_evaluations(context: Context, setup: NodeSetup, task: str) -> list[dict[str, Any]]:
    """The DP runs' evaluation results this node kept to itself (state-dir file, else Context state)."""
    if setup.state_dir is not None and setup.state_dir.is_dir():
        return node_ledger.read_all(
            setup.state_dir, node_ledger.EVALUATIONS_PREFIX, setup.identity.organization_id, task
        )
    return _state_rows(context, EVALUATIONS_KEY, task)


def _keep_evaluation(context: Context, setup: NodeSetup, task: str, row: dict[str, Any]) -> None:
    _set_state_rows(context, EVALUATIONS_KEY, task, [*_state_rows(context, EVALUATIONS_KEY, task), row])
    if setup.state_dir is not None:
        node_ledger.append_evaluation(setup.state_dir, setup.identity.organization_id, task, row)


# --- the handlers ------------------------------------------------------------------------------


@cache
def _source(data_key: str, task: str) -> DataSource:
    return source_from_config(json.loads(data_key), task)


def _records(setup: NodeSetup, task: str) -> list[dict[str, Any]]:
    key = json.dumps({k: v for k, v in setup.data.items()}, sort_keys=True, default=str)
    return list(_source(key, task).records())


def _state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(array.numpy(), copy=True)) for name, array in record.items()}


def make_client_app() -> ClientApp:
    app = ClientApp()

    @app.query("identify")
    def identify(msg: Message, context: Context) -> Message:
        setup = resolve_node(context)
        return Message(RecordDict({protocol.IDENTITY: setup.identity.to_record()}), reply_to=msg)

    @app.train(mods=[checksum_mod, budget_guard_mod])
    def train_handler(msg: Message, context: Context) -> Message:
        setup = resolve_node(context)
        instruction = TrainInstruction.from_record(protocol.config_of(msg.content, protocol.INSTRUCTION))
        if instruction.organization_id != setup.identity.organization_id:
            return _refusal(msg, instruction, "instruction addressed to another organization")
        task = get_task(instruction.task)
        remembered = (
            protocol.config_of(context.state, CONSENT_KEY) if CONSENT_KEY in context.state else ConfigRecord()
        )
        remembered[task.name] = list(instruction.user_ids)
        context.state[CONSENT_KEY] = remembered
        training_users, _ = split_users(setup.split_key, instruction.user_ids, instruction.holdout_fraction)
        result = train(
            task,
            _state(protocol.arrays_of(msg.content)),
            _records(setup, task.name),
            consented_user_ids=training_users,
            noise_multiplier=instruction.noise_multiplier,
            clip_norm=instruction.clip_norm,
            sample_rate=instruction.sample_rate,
            steps=instruction.steps,
            lr=instruction.lr,
            expected_batch_size=instruction.expected_batch_size
            if instruction.expected_batch_size > 0
            else None,
            unit=instruction.unit if instruction.unit else protocol.UNIT_RECORD,
            # Only a non-private run obeys the seed; with DP, train draws from the CSPRNG anyway.
            seed=None if instruction.dp else (instruction.seed or None),
            dp=instruction.dp,
        )
        used = result.dp_params_used
        # With DP the record count is private: it is neither reported nor put in the metrics.
        released_count = 0 if instruction.dp else result.num_examples
        report = TrainReport(
            organization_id=setup.identity.organization_id,
            consent_digest=instruction.consent_digest,
            update_checksum="",  # stamped by checksum_mod
            num_examples=released_count,
            trained=True,
            refusal="",
            noise_multiplier=used.noise_multiplier if used else 0.0,
            sample_rate=used.sample_rate if used else 0.0,
            steps=used.steps if used else 0,
            clip_norm=used.clip_norm if used else 0.0,
            unit=instruction.unit if used else "",
        )
        arrays = record_from_arrays({name: tensor.detach().numpy() for name, tensor in result.state.items()})
        content = RecordDict(
            {
                protocol.ARRAYS: arrays,
                protocol.REPORT: report.to_record(),
                protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: released_count}),
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        setup = resolve_node(context)
        instruction = EvalInstruction.from_record(protocol.config_of(msg.content, protocol.INSTRUCTION))
        if instruction.organization_id != setup.identity.organization_id:
            raise InvalidInputError("evaluate instruction addressed to another organization")
        task = get_task(instruction.task)
        # Held-out consented users only: never a record the model trained on, never one outside the snapshot.
        _, held_out = split_users(setup.split_key, instruction.user_ids, instruction.holdout_fraction)
        result = evaluate(
            task,
            _state(protocol.arrays_of(msg.content)),
            _records(setup, task.name),
            consented_user_ids=held_out,
        )
        if instruction.dp:
            # The metric is computed from private records and not charged: it stays on the node.
            _keep_evaluation(
                context,
                setup,
                task.name,
                {
                    "run_id": instruction.run_id,
                    "server_round": instruction.server_round,
                    "time": node_ledger.now_iso(),
                    "metric": result.metric,
                    "value": result.value,
                    "loss": result.loss,
                    "num_examples": result.num_examples,
                },
            )
            return Message(
                RecordDict({protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 0})}), reply_to=msg
            )
        value = result.value if not math.isnan(result.value) else 0.0
        metrics = MetricRecord({protocol.NUM_EXAMPLES: result.num_examples, task.metric.name: float(value)})
        return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)

    return app


app = make_client_app()
