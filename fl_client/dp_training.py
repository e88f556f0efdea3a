"""DP-SGD on a tenant node: Poisson sampling, per-example clipping, Gaussian noise (Opacus' recipe).

Each of `steps` steps includes every record independently with probability q (an empty batch is
a valid step, as the accountant assumes), clips each example's gradient to norm C, adds
N(0, (zC)²) noise to the sum and divides by the expected batch size qN — exactly the mechanism
that (z, q, steps) describe to an RDP/PRV accountant, so the ledger can replay it.

Randomness: sampling and noise use two `torch.Generator`s derived from one seed. In production the
node passes nothing and the seed comes from `secrets` (the OS CSPRNG); the generators themselves
are Mersenne Twister, not a CSPRNG (Opacus' `secure_mode` needs torchcsprng, which is not shipped
for current torch). Tests and simulations pass a seed to make a run reproducible.

The non-private path (`dp=False`) samples the same way and applies the same update without clipping
or noise, so DP's cost in accuracy and time is measured against a like-for-like baseline.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fl_client.per_sample import DEFAULT_METHOD, make_clipper
from fl_client.tasks.common import predict
from fl_client.tasks.data_sources import filter_by_consent
from fl_client.tasks.registry import get_task
from fl_client.tasks.spec import Record, TaskSpec
from schema.errors import InvalidInputError

ModelState = dict[str, Tensor]


@dataclass(frozen=True)
class DpParams:
    """The DP-SGD parameters a node actually used: what the ledger charges and the accountant replays."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "clip_norm": self.clip_norm,
        }


@dataclass(frozen=True)
class TrainResult:
    """A node's training outcome; `delta` = `state` minus the state it started from."""

    state: ModelState
    delta: ModelState
    num_examples: int
    #: None when trained without DP (nothing to charge).
    dp_params_used: DpParams | None
    method: str
    #: Only values safe to send: with DP, nothing computed from the records beyond the count.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    metric: str
    value: float
    loss: float
    num_examples: int
    higher_is_better: bool


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed per purpose (sampling, noise) from one node seed."""
    digest = hashlib.blake2b(f"{seed}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _generator(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, purpose))


def load_model(task: TaskSpec, model_state: Mapping[str, Tensor] | None, seed: int = 0) -> nn.Module:
    """The task's model with `model_state` (or fresh weights from `seed` when None); refuses a mismatch."""
    model = task.build_model(seed)
    if model_state is not None:
        try:
            model.load_state_dict(dict(model_state), strict=True)
        except (RuntimeError, KeyError) as exc:
            first = str(exc).splitlines()[0]
            raise InvalidInputError(f"weights do not fit model type {task.name!r}: {first}") from None
    return model


def _check_params(
    noise_multiplier: float, clip_norm: float, sample_rate: float, steps: int, lr: float
) -> None:
    if not 0.0 < sample_rate <= 1.0:
        raise InvalidInputError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 0:
        raise InvalidInputError(f"steps must be non-negative, got {steps}")
    if not (math.isfinite(clip_norm) and clip_norm > 0.0):
        raise InvalidInputError(f"clip_norm must be positive, got {clip_norm}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise InvalidInputError(f"noise_multiplier must be non-negative, got {noise_multiplier}")
    if not (math.isfinite(lr) and lr > 0.0):
        raise InvalidInputError(f"lr must be positive, got {lr}")


def _encoded(
    task: TaskSpec, records: Iterable[Record], consented_user_ids: Collection[str] | None
) -> tuple[Tensor, Tensor]:
    rows: list[Record] = (
        list(records) if consented_user_ids is None else list(filter_by_consent(records, consented_user_ids))
    )
    return task.encode(rows)


def train(
    task: TaskSpec | str,
    model_state: Mapping[str, Tensor] | None,
    records: Iterable[Record],
    *,
    consented_user_ids: Collection[str] | None,
    noise_multiplier: float,
    clip_norm: float,
    sample_rate: float,
    steps: int,
    lr: float,
    seed: int | None = None,
    dp: bool = True,
    method: str = DEFAULT_METHOD,
) -> TrainResult:
    """Train on the records of consenting users; return the new weights, the delta and what DP used.

    `consented_user_ids` is required so that forgetting the consent filter is a visible choice:
    pass the snapshot the server sent, or None only for data with no users (benchmarks).
    """
    spec = get_task(task)
    _check_params(noise_multiplier, clip_norm, sample_rate, steps, lr)
    features, targets = _encoded(spec, records, consented_user_ids)
    n = len(features)
    if n == 0:
        raise InvalidInputError("no consented records to train on")
    node_seed = secrets.randbits(63) if seed is None else seed
    model = load_model(spec, model_state)
    model.train()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
    sampling = _generator(node_seed, "sampling")
    noise = _generator(node_seed, "noise")
    step_size = lr / (sample_rate * n)  # the sum is divided by the expected batch size qN
    noise_std = noise_multiplier * clip_norm
    sizes = [p.numel() for p in params]
    total = sum(sizes)
    clipper = make_clipper(method, model, spec.loss) if dp else None
    try:
        for _ in range(steps):
            chosen = (torch.rand(n, generator=sampling) < sample_rate).nonzero().squeeze(1)
            x, y = features[chosen], targets[chosen]
            if clipper is not None:
                grads = clipper.clipped_sum(x, y, clip_norm)
                if noise_std > 0.0:
                    draws = torch.split(torch.randn(total, generator=noise), sizes)
                    torch._foreach_add_(
                        grads, [d.view_as(g) for d, g in zip(draws, grads, strict=True)], alpha=noise_std
                    )
            elif len(x) > 0:
                grads = list(torch.autograd.grad(spec.loss(model(x), y).sum(), params))
            else:
                continue
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-step_size)
    finally:
        if clipper is not None:
            clipper.close()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics: dict[str, float] = {}
    if not dp:
        metrics["train_loss"] = float(spec.loss(predict(model, features), targets).mean())
    return TrainResult(
        state=state,
        delta={k: state[k] - start[k] for k in state},
        num_examples=n,
        dp_params_used=(
            DpParams(
                noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, clip_norm=clip_norm
            )
            if dp
            else None
        ),
        method=clipper.name if clipper is not None else "non_private",
        metrics=metrics,
    )


def evaluate(
    task: TaskSpec | str,
    model_state: Mapping[str, Tensor] | None,
    records: Iterable[Record],
    *,
    consented_user_ids: Collection[str] | None,
) -> EvalResult:
    """The task's metric and mean loss on the records (of consenting users); NaN when there are none."""
    spec = get_task(task)
    features, targets = _encoded(spec, records, consented_user_ids)
    model = load_model(spec, model_state)
    outputs = predict(model, features)
    loss = float(spec.loss(outputs, targets).mean()) if len(targets) else math.nan
    return EvalResult(
        metric=spec.metric.name,
        value=spec.metric(outputs, targets),
        loss=loss,
        num_examples=len(targets),
        higher_is_better=spec.metric.higher_is_better,
    )
