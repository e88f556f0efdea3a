"""The tenant node: a Flower ClientApp that trains only on consented records, under its own budget.

A node is configured by its SuperNode's node config (deployment: ``organization-id``, ``tenant``,
``data-source`` … ``epsilon-cap``) or, in a simulation, by a manifest (run config ``manifest`` or
``ACCUTE_FL_MANIFEST``) that maps Flower's ``partition-id`` to the same keys.

Two behaviours are Flower mods, so they wrap every train call the same way:
- ``budget_guard_mod``: the node keeps its own privacy ledger (in the node's Context state, and on
  disk under ``state-dir`` when set) and refuses to train when the instructed DP-SGD would push its
  own epsilon over its own cap — whatever the server believes.
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
from fl_client import protocol
from fl_client.dp_training import evaluate, train
from fl_client.protocol import NodeIdentity, TrainInstruction, TrainReport
from fl_client.tasks import get_task
from fl_client.tasks.data_sources import DataSource, source_from_config
from privacy import accounting
from privacy.events import DpSgdEvent

MANIFEST_ENV = "ACCUTE_FL_MANIFEST"
LEDGER_KEY = "accute-node-ledger"
CONSENT_KEY = "accute-node-consent"


@dataclass(frozen=True)
class NodeSetup:
    identity: NodeIdentity
    data: Mapping[str, Any]
    epsilon_cap: float
    delta: float
    state_dir: Path | None


@cache
def _manifest(path: str) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


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
        epsilon_cap=float(config.get(protocol.NODE_EPSILON_CAP, math.inf)),
        delta=float(config.get(protocol.NODE_DELTA, 1e-5)),
        state_dir=Path(str(config[protocol.NODE_STATE_DIR])) if config.get(protocol.NODE_STATE_DIR) else None,
    )


# --- the node's own ledger ---------------------------------------------------------------------


def _ledger_file(setup: NodeSetup, task: str) -> Path | None:
    if setup.state_dir is None:
        return None
    return setup.state_dir / f"ledger-{setup.identity.organization_id}-{task}.json"


def node_events(context: Context, setup: NodeSetup, task: str) -> list[DpSgdEvent]:
    """The DP-SGD events this node has run for ``task`` (disk survives restarts; state survives rounds)."""
    path = _ledger_file(setup, task)
    if path is not None and path.exists():
        rows = json.loads(path.read_text())
    elif LEDGER_KEY in context.state and task in context.state[LEDGER_KEY]:
        rows = json.loads(str(protocol.config_of(context.state, LEDGER_KEY)[task]))
    else:
        rows = []
    return [DpSgdEvent(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]


def _save_events(context: Context, setup: NodeSetup, task: str, events: list[DpSgdEvent]) -> None:
    rows = json.dumps(
        [
            {"noise_multiplier": e.noise_multiplier, "sample_rate": e.sample_rate, "steps": e.steps}
            for e in events
        ]
    )
    record = protocol.config_of(context.state, LEDGER_KEY) if LEDGER_KEY in context.state else ConfigRecord()
    record[task] = rows
    context.state[LEDGER_KEY] = record
    path = _ledger_file(setup, task)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(rows)
        temporary.replace(path)


def budget_guard_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Refuse to train when the node's own epsilon would exceed its own cap; record what was spent."""
    if protocol.INSTRUCTION not in msg.content:
        return call_next(msg, context)
    instruction = TrainInstruction.from_record(protocol.config_of(msg.content, protocol.INSTRUCTION))
    setup = resolve_node(context)
    if not instruction.dp:
        return call_next(msg, context)
    event = DpSgdEvent(instruction.noise_multiplier, instruction.sample_rate, instruction.steps)
    history = node_events(context, setup, instruction.task)
    after = accounting.epsilon([*history, event], setup.delta)
    if after > setup.epsilon_cap:
        return _refusal(
            msg,
            instruction,
            f"node's own epsilon would reach {after:.4f}, over its cap {setup.epsilon_cap:g}",
        )
    reply = call_next(msg, context)
    if not reply.has_error() and protocol.REPORT in reply.content:
        report = TrainReport.from_record(protocol.config_of(reply.content, protocol.REPORT))
        if report.trained:
            used = DpSgdEvent(report.noise_multiplier, report.sample_rate, report.steps)
            _save_events(context, setup, instruction.task, [*history, used])
    return reply


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
        result = train(
            task,
            _state(protocol.arrays_of(msg.content)),
            _records(setup, task.name),
            consented_user_ids=instruction.user_ids,
            noise_multiplier=instruction.noise_multiplier,
            clip_norm=instruction.clip_norm,
            sample_rate=instruction.sample_rate,
            steps=instruction.steps,
            lr=instruction.lr,
            seed=instruction.seed or None,
            dp=instruction.dp,
        )
        used = result.dp_params_used
        report = TrainReport(
            organization_id=setup.identity.organization_id,
            consent_digest=instruction.consent_digest,
            update_checksum="",  # stamped by checksum_mod
            num_examples=result.num_examples,
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
                protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: result.num_examples}),
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        setup = resolve_node(context)
        config = protocol.config_of(msg.content, protocol.INSTRUCTION)
        task = get_task(str(config["task"]))
        records = _records(setup, task.name)
        user_ids = {str(r["user_id"]) for r in records}
        result = evaluate(task, _state(protocol.arrays_of(msg.content)), records, consented_user_ids=user_ids)
        value = result.value if not math.isnan(result.value) else 0.0
        metrics = MetricRecord(
            {protocol.NUM_EXAMPLES: max(result.num_examples, 0), task.metric.name: float(value)}
        )
        return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)

    return app


app = make_client_app()
