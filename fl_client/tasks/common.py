"""Building blocks the task definitions share: small CPU MLPs, per-example losses, metrics."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl_client.tasks.spec import MetricSpec


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


@torch.no_grad()
def predict(model: nn.Module, features: Tensor) -> Tensor:
    """Model outputs in eval mode, without building a graph."""
    model.eval()
    outputs: Tensor = model(features)
    return outputs
