"""Building blocks the task definitions share: small CPU MLPs, per-example losses, metrics."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl_client.tasks.features import ClassLabel, RecordEncoder
from fl_client.tasks.spec import HeadType, MetricSpec, TaskSpec, TrainingDefaults


def mlp(in_dim: int, hidden: int, out_dim: int) -> Callable[[], nn.Module]:
    """A factory of Linear-ReLU-Linear: no batch norm (per-example gradients need examples independent)."""

    def factory() -> nn.Module:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    return factory


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross entropy of logits (batch, classes) against class indices."""
    return F.cross_entropy(outputs, targets, reduction="none")


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example squared error of a (batch, 1) regression output."""
    return (outputs.reshape(-1) - targets) ** 2


def _accuracy(outputs: Tensor, targets: Tensor) -> float:
    return float((outputs.argmax(dim=1) == targets).float().mean())


ACCURACY = MetricSpec(name="accuracy", higher_is_better=True, fn=_accuracy)


def mean_absolute_error(inverse: Callable[[Tensor], Tensor], unit: str) -> MetricSpec:
    """MAE in the target's own unit: `inverse` undoes the target's encoding transform."""

    def fn(outputs: Tensor, targets: Tensor) -> float:
        return float((inverse(outputs.reshape(-1)) - inverse(targets)).abs().mean())

    return MetricSpec(name=f"mae_{unit}", higher_is_better=False, fn=fn)


#: What trains every classifier here well on one synthetic firm (a few hundred records).
CLASSIFIER_DEFAULTS = TrainingDefaults(lr=0.5, sample_rate=0.1, steps=300, clip_norm=1.0)


def classification_task(
    name: str,
    head_type: HeadType,
    contribution_type: str | None,
    description: str,
    encoder: RecordEncoder,
    hidden: int = 32,
    defaults: TrainingDefaults = CLASSIFIER_DEFAULTS,
) -> TaskSpec:
    """A classifier: MLP over the encoder's features, cross entropy, accuracy."""
    if not isinstance(encoder.label, ClassLabel):
        raise TypeError(f"{name}: a classification task needs a ClassLabel target")
    return TaskSpec(
        name=name,
        head_type=head_type,
        contribution_type=contribution_type,
        description=description,
        encoder=encoder,
        model_factory=mlp(encoder.dim, hidden, len(encoder.label.classes)),
        loss=cross_entropy,
        metric=ACCURACY,
        defaults=defaults,
    )


@torch.no_grad()
def predict(model: nn.Module, features: Tensor) -> Tensor:
    """Model outputs in eval mode, without building a graph."""
    model.eval()
    outputs: Tensor = model(features)
    return outputs
