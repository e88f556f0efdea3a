"""The validation task: scikit-learn's bundled 8x8 digits (1,797 images, no download).

A known answer for the whole pipeline: centralised non-private training reaches about 97 %, so a
federated or private run can be judged against it.
"""

from __future__ import annotations

from functools import cache

from fl_client.tasks.common import classification_task
from fl_client.tasks.features import ClassLabel, NumericBlock, RecordEncoder
from fl_client.tasks.spec import TrainingDefaults

PIXEL_COLUMNS: tuple[str, ...] = tuple(f"p{i}" for i in range(64))
DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))

DIGITS_ENCODER = RecordEncoder(
    fields=(NumericBlock(PIXEL_COLUMNS, 16.0),),
    label=ClassLabel("label", DIGIT_CLASSES),
)

#: Record-level local DP that learns (issue 18), chosen by ``bench/dp_quality_sweep.py`` (BENCHMARKS.md,
#: "DP quality"): every record in every step (q = 1: at these privacy levels subsampling amplification
#: buys less than the larger batch loses), 4 local steps a round so that the tenants' noisy models are
#: averaged often, lr 1 (lr 2 did as well under DP, whose clipping bounds each step, but diverges
#: without it), clip 1, and more rounds (simulate's and RunConfig's default of 20). The noise
#: multiplier is the one whose whole default run (20 rounds x 4 steps, delta 1e-5) costs each tenant
#: epsilon 8 (7.99); ``--target-epsilon`` recalibrates it for another budget.
DIGITS_DEFAULTS = TrainingDefaults(lr=1.0, sample_rate=1.0, steps=4, clip_norm=1.0, noise_multiplier=5.71)

#: A validation task feeds no VAMN head in production; "quantitative" only gives its published
#: versions a valid registry row.
DIGITS = classification_task(
    "digits",
    "quantitative",
    None,
    "Validation: 8x8 handwritten digit classification (scikit-learn's bundled data).",
    DIGITS_ENCODER,
    defaults=DIGITS_DEFAULTS,
)


@cache
def _digits_rows() -> tuple[tuple[tuple[int, ...], int], ...]:
    from sklearn.datasets import load_digits  # heavy; only simulations and tests need the data

    bunch = load_digits()
    return tuple(
        (tuple(int(v) for v in image), int(target))
        for image, target in zip(bunch.data, bunch.target, strict=True)
    )


def digits_records() -> list[dict[str, int | str]]:
    """All 1,797 digits as flat records (no `user_id`: the simulation assigns users per tenant)."""
    return [digits_record(index) for index in range(len(_digits_rows()))]


def digits_record(index: int) -> dict[str, int | str]:
    """Digit ``index`` of ``digits_records()``, built alone: a tenant holding 10 digits builds 10
    records, not all 1,797 (~20 ms) each time its node trains or evaluates."""
    pixels, target = _digits_rows()[index]
    record: dict[str, int | str] = dict(zip(PIXEL_COLUMNS, pixels, strict=True))
    record["label"] = str(target)
    return record


def digits_labels() -> list[int]:
    """The class of each digit, in the order of `digits_records()` (for label-skewed partitions)."""
    return [target for _, target in _digits_rows()]
