"""The wire contract between the ServerApp and the tenant ClientApp.

Both sides import this module (the server imports fl_client, never the reverse). Each message
carries records under fixed names; the typed views below convert to and from Flower's
``ConfigRecord`` so a missing or mistyped field fails loudly on arrival instead of deep inside
training.

Message flow per round::

    server --query {identify}--------------> node   (once per run: which organization is this node?)
    server <--------{identity}--------------- node
    server --train {arrays, instruction}---> node   (weights + consent snapshot + DP parameters)
    server <-------{arrays, report, metrics}- node   (new weights + DP parameters used + checksum)
    server --evaluate {arrays, instruction}> node   (EvalInstruction: held-out consented users only)
    server <-------{metrics}----------------- node   (DP runs: no metric, no count; it stays on the node)

What a node releases in a DP run (invariant 9): the update (normalised by the public
``expected_batch_size``, never by its private record count) and the DP parameters it used. No
record count (``num_examples`` is 0), no evaluation metric, and no noise the server could know:
with DP on the node ignores ``seed`` and draws sampling and noise from the OS CSPRNG.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

ARRAYS = "arrays"
INSTRUCTION = "instruction"
REPORT = "report"
METRICS = "metrics"
IDENTITY = "identity"

#: MetricRecord keys.
NUM_EXAMPLES = "num-examples"

#: Node config keys a deployed SuperNode is started with (``--node-config "organization-id='…' …"``).
NODE_ORGANIZATION = "organization-id"
NODE_TENANT = "tenant"
NODE_DATA_SOURCE = "data-source"
NODE_EPSILON_CAP = "epsilon-cap"
NODE_DELTA = "delta"
NODE_STATE_DIR = "state-dir"

#: Node config key overriding the held-out split's key (default: the organization id).
NODE_HOLDOUT_KEY = "holdout-key"

#: Run config key naming a federation manifest (simulations: partition-id -> tenant).
RUN_MANIFEST = "manifest"

#: What one unit of privacy protects in a node's DP-SGD (central DP at the server protects a tenant).
UNIT_RECORD = "record"
UNIT_USER = "user"
LOCAL_UNITS = (UNIT_RECORD, UNIT_USER)

T = TypeVar("T")


def _to_record(view: Any) -> ConfigRecord:
    values = {}
    for key, value in asdict(view).items():
        values[key] = list(value) if isinstance(value, tuple) else value
    return ConfigRecord(values)


def _from_record(cls: type[T], record: ConfigRecord) -> T:
    kwargs: dict[str, Any] = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        if spec.name not in record:
            raise ValueError(f"message field '{spec.name}' is missing")
        value = record[spec.name]
        kwargs[spec.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


@dataclass(frozen=True)
class NodeIdentity:
    """Who a node says it is; the server binds the node id to this organization for the run."""

    organization_id: str
    tenant: str

    def to_record(self) -> ConfigRecord:
        return _to_record(self)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> NodeIdentity:
        return _from_record(cls, record)


@dataclass(frozen=True)
class TrainInstruction:
    """What the server asks of one tenant in one round."""

    run_id: str
    server_round: int
    task: str
    organization_id: str
    consent_digest: str
    #: The consent snapshot: only these users' records may train.
    user_ids: tuple[str, ...]
    dp: bool
    noise_multiplier: float
    clip_norm: float
    #: Poisson rate of the sampled unit (records at record level, users at user level).
    sample_rate: float
    steps: int
    lr: float
    #: Only for dp=False runs (explicitly non-private, reproducible); a DP node ignores it.
    seed: int
    #: "record" or "user": what one DP-SGD step samples and clips.
    unit: str
    #: The public denominator of each step's noisy sum (expected sampled units per step); never
    #: the node's private record count.
    expected_batch_size: float
    #: The node's own guard: refuse a DP instruction that would take its own epsilon (at this
    #: delta, for this unit) over this cap, unless its node config overrides the cap.
    epsilon_cap: float
    delta: float
    #: Share of consented users held out for evaluation (keyed hash of the user id); they never train.
    holdout_fraction: float

    def to_record(self) -> ConfigRecord:
        return _to_record(self)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> TrainInstruction:
        return _from_record(cls, record)


@dataclass(frozen=True)
class EvalInstruction:
    """Evaluate the global model on the node's held-out consented users (the training split's complement)."""

    run_id: str
    server_round: int
    task: str
    organization_id: str
    #: The consent snapshot of this round: only these users' records may be evaluated.
    user_ids: tuple[str, ...]
    #: True in DP runs: the metric stays on the node (its ledger file), nothing is released.
    dp: bool
    holdout_fraction: float

    def to_record(self) -> ConfigRecord:
        return _to_record(self)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> EvalInstruction:
        return _from_record(cls, record)


@dataclass(frozen=True)
class TrainReport:
    """What a node says it did; the server checks it against the instruction and the update."""

    organization_id: str
    consent_digest: str
    #: SHA-256 of the returned weights (aggregation.checksum.update_checksum's canonical form).
    update_checksum: str
    #: Records trained on, for non-private runs only; 0 in DP runs (a private count is never released).
    num_examples: int
    trained: bool
    #: Why the node refused to train ("" when it trained), e.g. its own budget guard.
    refusal: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    #: The unit of privacy the node's DP-SGD protected ("record" or "user"; "" without DP).
    unit: str

    def to_record(self) -> ConfigRecord:
        return _to_record(self)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> TrainReport:
        return _from_record(cls, record)


def config_of(content: RecordDict, key: str) -> ConfigRecord:
    """The ConfigRecord under ``key``; a missing or mistyped record fails here, not deep inside."""
    record = content[key]
    if not isinstance(record, ConfigRecord):
        raise ValueError(f"record '{key}' is a {type(record).__name__}, not a ConfigRecord")
    return record


def arrays_of(content: RecordDict, key: str = ARRAYS) -> ArrayRecord:
    record = content[key]
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"record '{key}' is a {type(record).__name__}, not an ArrayRecord")
    return record


def metrics_of(content: RecordDict, key: str = METRICS) -> MetricRecord:
    record = content[key]
    if not isinstance(record, MetricRecord):
        raise ValueError(f"record '{key}' is a {type(record).__name__}, not a MetricRecord")
    return record
