"""The Flower adapter, and agreement with Flower's own aggregate_arrayrecords."""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from aggregation import WeightedMean, update_checksum
from aggregation.flwr_adapter import arrays_from_record, record_from_arrays
from tests.aggregation.helpers import random_update, small_spec


def test_records_round_trip_in_spec_order() -> None:
    # Prepare
    spec = small_spec()
    update = random_update(spec, np.random.default_rng(0))
    shuffled = dict(reversed(list(update.items())))

    # Execute
    record = record_from_arrays(shuffled, spec)
    back = arrays_from_record(record)

    # Assert
    assert list(record.keys()) == list(spec.names)
    assert update_checksum(back) == update_checksum(update, spec.names)


def test_streaming_mean_agrees_with_flowers_aggregate_arrayrecords() -> None:
    # Prepare
    spec = small_spec()
    rng = np.random.default_rng(1)
    batch = [random_update(spec, rng) for _ in range(6)]
    ws = [3, 17, 1, 250, 40, 8]
    replies = [
        RecordDict({"arrays": record_from_arrays(u, spec), "metrics": MetricRecord({"num-examples": w})})
        for u, w in zip(batch, ws, strict=True)
    ]
    mean = WeightedMean(spec)

    # Execute
    for reply, w in zip(replies, ws, strict=True):
        mean.add(arrays_from_record(reply.array_records["arrays"]), w)
    ours = mean.result()
    theirs = arrays_from_record(aggregate_arrayrecords(replies, "num-examples"))

    # Assert
    for e in spec:
        np.testing.assert_allclose(ours[e.name], theirs[e.name], rtol=1e-5, atol=1e-6)
