"""The Flower adapter, and agreement with Flower's own aggregate_arrayrecords."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from aggregation import WeightedMean, update_checksum
from aggregation.flwr_adapter import arrays_from_record, record_from_arrays, update_from_content
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


def reply_content(update: dict[str, np.ndarray], weight: int) -> RecordDict:
    return RecordDict(
        {"arrays": record_from_arrays(update), "metrics": MetricRecord({"num-examples": weight})}
    )


def test_update_from_content_reads_the_arrays_and_the_weight() -> None:
    # Prepare
    spec = small_spec()
    update = random_update(spec, np.random.default_rng(3))

    # Execute
    arrays, weight = update_from_content(reply_content(update, 42))

    # Assert
    assert weight == 42.0
    assert update_checksum(arrays, spec.names) == update_checksum(update, spec.names)


def test_update_from_content_leaves_no_cycle_that_keeps_the_reply_alive() -> None:
    # Prepare: with the cyclic GC off, only reference counting can free the reply.
    content = reply_content(random_update(small_spec(), np.random.default_rng(4)), 1)
    alive = weakref.ref(content)
    gc.disable()
    try:
        # Execute
        update_from_content(content)
        del content

        # Assert
        assert alive() is None
    finally:
        gc.enable()


def test_update_from_content_needs_exactly_one_array_record_unless_named() -> None:
    # Prepare
    update = random_update(small_spec(), np.random.default_rng(5))
    two = RecordDict({"a": record_from_arrays(update), "b": record_from_arrays(update)})

    # Execute / Assert
    with pytest.raises(ValueError, match="one ArrayRecord"):
        update_from_content(two)
    arrays, weight = update_from_content(two, arrays_key="b")
    assert set(arrays) == set(update) and weight is None


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        np.arange(6, dtype=">i4"),
        np.array(2.5, np.float16),
        np.zeros((0, 3), np.float32),
    ],
    ids=["c-order", "fortran-order", "big-endian", "0-d", "empty"],
)
def test_zero_copy_views_equal_flowers_own_deserialization(array: np.ndarray) -> None:
    # Prepare
    record = record_from_arrays({"a": array})
    record_f = ArrayRecord({"a": Array(array)})

    # Execute
    view = arrays_from_record(record)["a"]
    view_f = arrays_from_record(record_f)["a"]
    copied = arrays_from_record(record, copy=True)["a"]

    # Assert
    for got in (view, view_f, copied):
        np.testing.assert_array_equal(got, array)
        assert got.dtype == array.dtype and got.shape == array.shape
    assert not view.flags.writeable and copied.flags.writeable


def test_a_truncated_payload_is_refused() -> None:
    # Prepare
    good = Array(np.arange(10, dtype=np.float32))
    truncated = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4])

    # Execute / Assert
    with pytest.raises(ValueError, match="size its header declares"):
        arrays_from_record(ArrayRecord({"a": truncated}))
