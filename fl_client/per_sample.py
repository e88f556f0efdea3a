"""Per-example clipped gradient sums, the inner step of DP-SGD, by several exact methods.

Each method returns sum_i clip(grad l_i, C) for a batch, where clip scales an example's whole gradient
(all parameters together) to norm ≤ C, with Opacus' factor min(1, C / (‖g_i‖ + 1e-6)). They
differ only in speed (bench/dp_sgd_node.py; numbers in BENCHMARKS.md):

- `linear_ghost` (hand-written, default): for Linear layers the per-example gradient is the outer
  product g_i a_iᵀ of the output gradient and the input, so its norm is ‖g_i‖·‖a_i‖ and the clipped
  sum is (c ⊙ G)ᵀA — one forward, one backward, no per-example tensors. Models made of
  `nn.Linear` and parameter-free layers only (all of ours).
- `functorch`: `torch.func.vmap(grad(...))` over the batch — any model without batch statistics.
- `opacus_hooks`: Opacus' GradSampleModule (forward/backward hooks, materialised grad_sample).
- `opacus_ew`: Opacus with PyTorch's expanded weights.
- `opacus_ghost`: Opacus' ghost clipping (norms by hooks, then a second, re-weighted backward).

User-level DP-SGD clips each *user's* contribution instead (`clipped_group_sum`): the sum of the
gradients of that user's records in the batch, clipped as one vector. `linear_ghost` gets each
user's norm without per-user tensors, from the Gram identity
‖Σ_{i∈u} g_i a_iᵀ‖² = Σ_{i,j∈u} (g_i·g_j)(a_i·a_j); the materialising methods segment-sum their
per-example gradients by user and clip those. `opacus_ghost` has no per-user form and refuses.
"""

from __future__ import annotations

import warnings
from abc import ABC
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fl_client.tasks.spec import LossFn
from schema.errors import InvalidInputError

_EPS = 1e-6

#: Rows of the per-user Gram matrix computed at once (memory: this many times the batch size).
_GRAM_CHUNK = 1024


def clip_factors(norms: Tensor, clip_norm: float) -> Tensor:
    """Opacus' per-example scale: min(1, C / (‖g‖ + 1e-6))."""
    return (clip_norm / (norms + _EPS)).clamp(max=1.0)


def segment_sum(per_sample: list[Tensor], groups: Tensor, num_groups: int) -> list[Tensor]:
    """Per-group sums of per-example tensors: row ``u`` of each result is Σ_{i: groups[i]=u} row i."""
    return [
        torch.zeros((num_groups, *g.shape[1:]), dtype=g.dtype).index_add_(0, groups, g) for g in per_sample
    ]


def clip_and_sum(per_sample: list[Tensor], clip_norm: float) -> list[Tensor]:
    """Σ_i clip(g_i, C) from materialised per-example gradients (one (B, *shape) tensor per parameter)."""
    flat = torch.cat([g.reshape(g.shape[0], -1) for g in per_sample], dim=1)
    factors = clip_factors(flat.norm(dim=1), clip_norm)
    return [torch.einsum("b,b...->...", factors, g) for g in per_sample]


class ClippedGradient(ABC):
    """Clipped gradient sums for one model (whose parameters change in place between calls)."""

    name: ClassVar[str]
    #: Whether `per_sample_grads` is available (the method materialises per-example gradients).
    materializes: ClassVar[bool] = True

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        self.model = model
        self.loss = loss
        self.params = [p for p in model.parameters() if p.requires_grad]

    def per_sample_grads(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """Per-example gradients of l(model(x_i), y_i), one (B, *shape) tensor per parameter."""
        raise NotImplementedError(f"{self.name} does not materialise per-example gradients")

    def clipped_sum(self, x: Tensor, y: Tensor, clip_norm: float) -> list[Tensor]:
        """sum_i clip(grad l_i, C), one tensor per parameter; zeros for an empty batch (Poisson sampling)."""
        if len(x) == 0:
            return [torch.zeros_like(p) for p in self.params]
        return self._clipped_sum(x, y, clip_norm)

    def _clipped_sum(self, x: Tensor, y: Tensor, clip_norm: float) -> list[Tensor]:
        return clip_and_sum(self.per_sample_grads(x, y), clip_norm)

    def clipped_group_sum(
        self, x: Tensor, y: Tensor, groups: Tensor, num_groups: int, clip_norm: float
    ) -> list[Tensor]:
        """sum_u clip(sum_{i: groups[i]=u} grad l_i, C): each group (user) is clipped as one vector.

        ``groups`` holds each example's group index in ``[0, num_groups)``; zeros for an empty batch.
        """
        if len(x) == 0:
            return [torch.zeros_like(p) for p in self.params]
        return self._clipped_group_sum(x, y, groups, num_groups, clip_norm)

    def _clipped_group_sum(
        self, x: Tensor, y: Tensor, groups: Tensor, num_groups: int, clip_norm: float
    ) -> list[Tensor]:
        if not self.materializes:
            raise InvalidInputError(
                f"{self.name} cannot clip per user; use linear_ghost or functorch for user-level DP"
            )
        return clip_and_sum(segment_sum(self.per_sample_grads(x, y), groups, num_groups), clip_norm)

    def close(self) -> None:  # noqa: B027 - most methods attach nothing
        """Remove whatever the method attached to the model."""


class FunctorchGradient(ClippedGradient):
    name = "functorch"

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        super().__init__(model, loss)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        buffers = dict(model.named_buffers())

        def example_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
            return loss(out, y.unsqueeze(0)).sum()

        self._names = names
        self._grads = vmap(grad(example_loss), in_dims=(None, 0, 0))

    def per_sample_grads(self, x: Tensor, y: Tensor) -> list[Tensor]:
        params = {n: p.detach() for n, p in zip(self._names, self.params, strict=True)}
        grads = self._grads(params, x, y)
        return [grads[n] for n in self._names]


class LinearGhostGradient(ClippedGradient):
    name = "linear_ghost"

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        super().__init__(model, loss)
        if not isinstance(model, nn.Sequential):
            raise InvalidInputError("linear_ghost needs an nn.Sequential model")
        for layer in model:
            if not isinstance(layer, nn.Linear) and any(True for _ in layer.parameters()):
                raise InvalidInputError(f"linear_ghost supports nn.Linear only, not {type(layer).__name__}")
        self.layers: list[nn.Module] = list(model)
        if not any(isinstance(layer, nn.Linear) for layer in self.layers):
            raise InvalidInputError("linear_ghost needs at least one nn.Linear layer")

    def _forward(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor], list[nn.Linear]]:
        """Inputs and outputs of each Linear, and the per-example output gradients of the summed loss."""
        inputs: list[Tensor] = []
        outputs: list[Tensor] = []
        linears: list[nn.Linear] = []
        h = x
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                inputs.append(h.detach())
                h = layer(h)
                outputs.append(h)
                linears.append(layer)
            else:
                h = layer(h)
        # Each example's loss depends only on its own row, so row i of d(sum l)/dz is dl_i/dz_i.
        backprops = torch.autograd.grad(self.loss(h, y).sum(), outputs)
        return inputs, list(backprops), linears

    def per_sample_grads(self, x: Tensor, y: Tensor) -> list[Tensor]:
        inputs, backprops, linears = self._forward(x, y)
        grads: dict[int, Tensor] = {}
        for a, g, layer in zip(inputs, backprops, linears, strict=True):
            grads[id(layer.weight)] = torch.einsum("bi,bj->bij", g, a)
            if layer.bias is not None:
                grads[id(layer.bias)] = g
        return [grads[id(p)] for p in self.params]

    def _clipped_sum(self, x: Tensor, y: Tensor, clip_norm: float) -> list[Tensor]:
        # Few, fused ops: with small layers the per-op dispatch, not the arithmetic, is the cost.
        inputs, backprops, linears = self._forward(x, y)
        sq_norms: Tensor | None = None
        for a, g, layer in zip(inputs, backprops, linears, strict=True):
            a_sq = torch.linalg.vecdot(a, a)
            if layer.bias is not None:
                a_sq = a_sq + 1.0  # the bias gradient is g itself: |g|^2 (|a|^2 + 1)
            term = torch.linalg.vecdot(g, g) * a_sq
            sq_norms = term if sq_norms is None else sq_norms + term
        assert sq_norms is not None  # the constructor refused a model without Linear layers
        factors = clip_factors(sq_norms.sqrt(), clip_norm)
        sums: dict[int, Tensor] = {}
        for a, g, layer in zip(inputs, backprops, linears, strict=True):
            sums[id(layer.weight)] = torch.mm(g.t() * factors, a)
            if layer.bias is not None:
                sums[id(layer.bias)] = torch.mv(g.t(), factors)
        return [sums[id(p)] for p in self.params]

    def _clipped_group_sum(
        self, x: Tensor, y: Tensor, groups: Tensor, num_groups: int, clip_norm: float
    ) -> list[Tensor]:
        # A group's gradient for one Linear is G_uᵀA_u, whose squared norm is the sum over the group's
        # pairs of (g_i·g_j)(a_i·a_j) (+ g_i·g_j for the bias). Row chunks bound the Gram's memory.
        inputs, backprops, linears = self._forward(x, y)
        row_sq = torch.zeros(len(x), dtype=x.dtype)
        for start in range(0, len(x), _GRAM_CHUNK):
            stop = min(start + _GRAM_CHUNK, len(x))
            same = groups[start:stop, None] == groups[None, :]
            block: Tensor | None = None
            for a, g, layer in zip(inputs, backprops, linears, strict=True):
                a_dot = a[start:stop] @ a.t()
                if layer.bias is not None:
                    a_dot = a_dot + 1.0
                term = (g[start:stop] @ g.t()) * a_dot
                block = term if block is None else block + term
            assert block is not None  # the constructor refused a model without Linear layers
            row_sq[start:stop] = (block * same).sum(dim=1)
        sq_norms = torch.zeros(num_groups, dtype=row_sq.dtype).index_add_(0, groups, row_sq)
        factors = clip_factors(sq_norms.clamp(min=0.0).sqrt(), clip_norm)[groups]
        sums: dict[int, Tensor] = {}
        for a, g, layer in zip(inputs, backprops, linears, strict=True):
            sums[id(layer.weight)] = torch.mm(g.t() * factors, a)
            if layer.bias is not None:
                sums[id(layer.bias)] = torch.mv(g.t(), factors)
        return [sums[id(p)] for p in self.params]


@contextmanager
def _quiet_hooks() -> Iterator[None]:
    """Opacus' full backward hooks warn on every call when the input needs no grad (ours never does)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield


def _release(wrapped: nn.Module) -> None:
    """Detach an Opacus wrapper's hooks and the attributes it put on the parameters."""
    for name in ("remove_hooks", "cleanup"):
        method = getattr(wrapped, name, None)
        if callable(method):
            method()


class _OpacusMaterialized(ClippedGradient):
    """Opacus wrappers that leave per-example gradients in `p.grad_sample` after a summed backward."""

    def _wrap(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        super().__init__(model, loss)
        self.wrapped = self._wrap(model)

    def per_sample_grads(self, x: Tensor, y: Tensor) -> list[Tensor]:
        self._clear()
        with _quiet_hooks():
            torch.autograd.backward([self.loss(self.wrapped(x), y).sum()])
        grads: list[Tensor] = [getattr(p, "grad_sample") for p in self.params]  # noqa: B009 - set by Opacus
        self._clear()
        return grads

    def _clear(self) -> None:
        for p in self.params:
            setattr(p, "grad_sample", None)  # noqa: B010 - Opacus' attribute
            p.grad = None

    def close(self) -> None:
        _release(self.wrapped)


class OpacusHooksGradient(_OpacusMaterialized):
    name = "opacus_hooks"

    def _wrap(self, model: nn.Module) -> nn.Module:
        from opacus import GradSampleModule

        wrapped: nn.Module = GradSampleModule(model, loss_reduction="sum")
        return wrapped


class OpacusExpandedWeightsGradient(_OpacusMaterialized):
    name = "opacus_ew"

    def _wrap(self, model: nn.Module) -> nn.Module:
        from opacus.grad_sample import GradSampleModuleExpandedWeights

        wrapped: nn.Module = GradSampleModuleExpandedWeights(model, loss_reduction="sum")
        return wrapped


class OpacusGhostGradient(ClippedGradient):
    name = "opacus_ghost"
    materializes = False

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        super().__init__(model, loss)
        from opacus.grad_sample import GradSampleModuleFastGradientClipping

        self.wrapped = GradSampleModuleFastGradientClipping(
            model, loss_reduction="sum", max_grad_norm=1.0, use_ghost_clipping=True
        )

    def _clipped_sum(self, x: Tensor, y: Tensor, clip_norm: float) -> list[Tensor]:
        # The same two passes as Opacus' DPTensorFastGradientClipping.backward, without an optimizer.
        self.wrapped.max_grad_norm = clip_norm
        with _quiet_hooks():
            losses = self.loss(self.wrapped(x), y)
            torch.autograd.backward([losses.sum()], retain_graph=True)
            factors = self.wrapped.get_clipping_coef()
            for p in self.params:
                p.grad = None
            self.wrapped.disable_hooks()
            try:
                torch.autograd.backward([(factors * losses).sum()])
            finally:
                self.wrapped.enable_hooks()
        sums = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p in self.params:
            p.grad = None
        return sums

    def close(self) -> None:
        _release(self.wrapped)


METHODS: dict[str, Callable[[nn.Module, LossFn], ClippedGradient]] = {
    cls.name: cls
    for cls in (
        LinearGhostGradient,
        FunctorchGradient,
        OpacusHooksGradient,
        OpacusExpandedWeightsGradient,
        OpacusGhostGradient,
    )
}
DEFAULT_METHOD = "linear_ghost"


def make_clipper(method: str, model: nn.Module, loss: LossFn) -> ClippedGradient:
    """The named method bound to `model`; `linear_ghost` falls back to `functorch` for other layers."""
    if method not in METHODS:
        raise InvalidInputError(f"unknown per-sample gradient method {method!r}; known: {', '.join(METHODS)}")
    if method == LinearGhostGradient.name:
        try:
            return LinearGhostGradient(model, loss)
        except InvalidInputError:
            return FunctorchGradient(model, loss)
    return METHODS[method](model, loss)
