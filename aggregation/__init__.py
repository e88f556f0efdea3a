"""Update validation, checksums and aggregation (streaming, robust, central DP) — numpy only.

The server-side flow per round::

    spec = ModelSpec.from_arrays(global_weights)                     # once per run
    validator = UpdateValidator(spec, max_norm=B, seen=seen)         # seen: restored SeenChecksums
    agg = make_aggregator("fedavg", spec)                            # or CentralDPSum for central DP
    for reply in replies:                                            # as they arrive (grid.pull_messages)
        update, num_examples = update_from_content(reply.content)   # aggregation.flwr_adapter
        verdict = validator.validate(update, reference=global_weights,
                                     claimed_checksum=sent_sha256, weight=num_examples)
        if isinstance(verdict, Rejected): record(verdict.reason, verdict.message); continue
        agg.add(update, weight=num_examples)
        del reply, update                                            # keep memory O(model)
    new_global = agg.result()

Flower conversion lives in `aggregation.flwr_adapter` (not imported here, so the rest of the
package needs numpy only).
"""

from aggregation.central_dp import CentralDPSum, NoiseSource
from aggregation.checksum import CHECKSUM_HEADER, is_checksum, update_checksum
from aggregation.errors import (
    AggregationError,
    AggregatorFinalizedError,
    EmptyAggregationError,
    InvalidWeightError,
    MissingNoiseSourceError,
    RejectReason,
    SpecMismatchError,
)
from aggregation.factory import AGGREGATOR_KINDS, AggregatorKind, make_aggregator
from aggregation.ops import apply_delta, clip_to_norm, delta, global_norm
from aggregation.robust import Krum, Median, TrimmedMean
from aggregation.spec import Arrays, ArraySpec, ModelSpec
from aggregation.streaming import Aggregator, StreamingSum, WeightedMean
from aggregation.validation import Accepted, Rejected, SeenChecksums, UpdateValidator, Verdict

__all__ = [
    "AGGREGATOR_KINDS",
    "CHECKSUM_HEADER",
    "Accepted",
    "AggregationError",
    "Aggregator",
    "AggregatorFinalizedError",
    "AggregatorKind",
    "ArraySpec",
    "Arrays",
    "CentralDPSum",
    "EmptyAggregationError",
    "InvalidWeightError",
    "Krum",
    "Median",
    "MissingNoiseSourceError",
    "ModelSpec",
    "NoiseSource",
    "RejectReason",
    "Rejected",
    "SeenChecksums",
    "SpecMismatchError",
    "StreamingSum",
    "TrimmedMean",
    "UpdateValidator",
    "Verdict",
    "WeightedMean",
    "apply_delta",
    "clip_to_norm",
    "delta",
    "global_norm",
    "is_checksum",
    "make_aggregator",
    "update_checksum",
]
