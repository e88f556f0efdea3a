"""The validation task: scikit-learn's bundled 8x8 digits (1,797 images, no download).

A known answer for the whole pipeline: centralised non-private training reaches about 97 %, so a
federated or private run can be judged against it.
"""

from __future__ import annotations

from functools import cache

from fl_client.tasks.common import ACCURACY, cross_entropy, mlp
from fl_client.tasks.features import ClassLabel, NumericBlock, RecordEncoder
from fl_client.tasks.spec import TaskSpec, TrainingDefaults

PIXEL_COLUMNS: tuple[str, ...] = tuple(f"p{i}" for i in range(64))
DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))

DIGITS_ENCODER = RecordEncoder(
    fields=(NumericBlock(PIXEL_COLUMNS, 16.0),),
    label=ClassLabel("label", DIGIT_CLASSES),
)

DIGITS = TaskSpec(
    name="digits",
    head_type="quantitative",
    contribution_type=None,
    description="Validation: 8x8 handwritten digit classification (scikit-learn's bundled data).",
    encoder=DIGITS_ENCODER,
    model_factory=mlp(DIGITS_ENCODER.dim, 32, len(DIGIT_CLASSES)),
    loss=cross_entropy,
    metric=ACCURACY,
    defaults=TrainingDefaults(lr=0.5, sample_rate=0.1, steps=300, clip_norm=1.0),
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
    records: list[dict[str, int | str]] = []
    for pixels, target in _digits_rows():
        record: dict[str, int | str] = dict(zip(PIXEL_COLUMNS, pixels, strict=True))
        record["label"] = str(target)
        records.append(record)
    return records


def digits_labels() -> list[int]:
    """The class of each digit, in the order of `digits_records()` (for label-skewed partitions)."""
    return [target for _, target in _digits_rows()]
