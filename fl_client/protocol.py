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
    server --evaluate {arrays, instruction}> node
    server <-------{metrics}----------------- node
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

#: Run config key naming a federation manifest (simulations: partition-id -> tenant).
RUN_MANIFEST = "manifest"

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
    sample_rate: float
    steps: int
    lr: float
    #: 0 lets the node draw its own seed from the OS CSPRNG; simulations fix it for reproducibility.
    seed: int

    def to_record(self) -> ConfigRecord:
        return _to_record(self)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> TrainInstruction:
        return _from_record(cls, record)


@dataclass(frozen=True)
class TrainReport:
    """What a node says it did; the server checks it against the instruction and the update."""

    organization_id: str
    consent_digest: str
    #: SHA-256 of the returned weights (aggregation.checksum.update_checksum's canonical form).
    update_checksum: str
    num_examples: int
    trained: bool
    #: Why the node refused to train ("" when it trained), e.g. its own budget guard.
    refusal: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float

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
