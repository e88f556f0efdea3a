"""What a model type is: the frozen contract the server and the tenant nodes share.

A `TaskSpec` names everything both sides must agree on without talking to each other: the model
architecture (so weights have the same keys and shapes), how records become tensors (so every
tenant encodes the same way — encoders use fixed transforms, never statistics of one tenant's
data), the per-example loss (DP-SGD clips per example), the metric, and the VAMN head it feeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fl_client.tasks.features import RecordEncoder

#: One tenant record: flat scalar columns; `user_id` (a UUID string) says whose data it is.
Record = Mapping[str, Any]

HeadType = Literal["semantic", "quantitative", "citation"]

#: Per-example loss: (model outputs for a batch, targets) -> losses of shape (batch,).
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MetricSpec:
    """A metric on a whole record set; `higher_is_better` decides what "improves" and "regresses" mean."""

    name: str
    higher_is_better: bool
    fn: Callable[[Tensor, Tensor], float]

    def __call__(self, outputs: Tensor, targets: Tensor) -> float:
        if len(targets) == 0:
            return math.nan
        return self.fn(outputs, targets)

    def better(self, candidate: float, reference: float) -> bool:
        """Whether `candidate` is strictly better than `reference` (NaN is never better)."""
        if math.isnan(candidate):
            return False
        if math.isnan(reference):
            return True
        return candidate > reference if self.higher_is_better else candidate < reference


@dataclass(frozen=True)
class TrainingDefaults:
    """Hyper-parameters that train this task well on one tenant; servers and simulations start here."""

    lr: float
    sample_rate: float
    steps: int
    clip_norm: float
    noise_multiplier: float = 1.0


@dataclass(frozen=True)
class TaskSpec:
    """One model type: model, encoder, loss, metric and where its weights go (VAMN head)."""

    name: str
    head_type: HeadType
    #: The `federated_learning_contributions.contribution_type` it is recorded under, if one fits.
    contribution_type: str | None
    description: str
    encoder: RecordEncoder
    model_factory: Callable[[], nn.Module]
    loss: LossFn
    metric: MetricSpec
    defaults: TrainingDefaults
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        """The record columns (besides `user_id`) a data source must provide."""
        return self.encoder.columns

    def build_model(self, seed: int = 0) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights in every process."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.model_factory()
        return model

    def initial_state(self, seed: int = 0) -> dict[str, Tensor]:
        """Initial weights for round 0 of a run (the server sends these to every tenant)."""
        return {k: v.detach().clone() for k, v in self.build_model(seed).state_dict().items()}

    def encode(self, records: Sequence[Record]) -> tuple[Tensor, Tensor]:
        """Features and targets of `records`, in order."""
        return self.encoder.encode(records)
