"""Every per-example gradient method is exact: it agrees with a loop over single examples."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fl_client.per_sample import METHODS, FunctorchGradient, clip_and_sum, make_clipper, segment_sum
from fl_client.tasks import get_task
from fl_client.tasks.spec import LossFn
from schema.errors import InvalidInputError
from tests.fl_client.conftest import firm_records


def _loop_grads(model: nn.Module, loss: LossFn, x: Tensor, y: Tensor) -> list[Tensor]:
    params = list(model.parameters())
    rows = [torch.autograd.grad(loss(model(x[i : i + 1]), y[i : i + 1]).sum(), params) for i in range(len(x))]
    return [torch.stack([row[j] for row in rows]) for j in range(len(params))]


@pytest.mark.parametrize("task", ["compliance_checks", "time_estimation"])
@pytest.mark.parametrize("method", list(METHODS))
def test_clipped_sum_equals_the_per_example_loop(method: str, task: str) -> None:
    # Prepare
    spec = get_task(task)
    x, y = spec.encode(firm_records(task, n=16))
    model = spec.build_model(seed=1)
    loop = _loop_grads(model, spec.loss, x, y)
    norms = torch.cat([g.reshape(16, -1) for g in loop], dim=1).norm(dim=1)
    clip = float(norms.median())  # half the examples are clipped, half are not
    expected = clip_and_sum(loop, clip)
    clipper = make_clipper(method, model, spec.loss)

    # Execute
    got = clipper.clipped_sum(x, y, clip)
    per_sample = clipper.per_sample_grads(x, y) if clipper.materializes else None
    clipper.close()

    # Assert
    assert (norms > clip).any() and (norms < clip).any()
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    if per_sample is not None:
        for g, e in zip(per_sample, loop, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_empty_batch_gives_zero_gradient(method: str) -> None:
    # Prepare
    spec = get_task("digits")
    model = spec.build_model()
    clipper = make_clipper(method, model, spec.loss)

    # Execute
    sums = clipper.clipped_sum(torch.zeros(0, spec.encoder.dim), torch.zeros(0, dtype=torch.long), 1.0)
    clipper.close()

    # Assert
    assert [s.shape for s in sums] == [p.shape for p in model.parameters()]
    assert all(not s.any() for s in sums)


def test_hand_written_method_falls_back_to_functorch_for_other_layers() -> None:
    # Prepare
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1))

    def loss(out: Tensor, y: Tensor) -> Tensor:
        return (out.reshape(-1) - y) ** 2

    x, y = torch.randn(6, 4), torch.randn(6)

    # Execute
    clipper = make_clipper("linear_ghost", model, loss)
    got = clipper.clipped_sum(x, y, 0.1)

    # Assert
    assert isinstance(clipper, FunctorchGradient)
    for g, e in zip(got, clip_and_sum(_loop_grads(model, loss, x, y), 0.1), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", ["compliance_checks", "time_estimation"])
@pytest.mark.parametrize("method", list(METHODS))
def test_group_clipped_sum_clips_each_users_summed_gradient(method: str, task: str) -> None:
    # Prepare: 24 examples of 5 users (one user has a single example), clip at the median user norm.
    spec = get_task(task)
    x, y = spec.encode(firm_records(task, n=24))
    groups = torch.tensor([0] * 9 + [1] * 6 + [2] * 5 + [3] * 3 + [4])
    model = spec.build_model(seed=1)
    per_user = segment_sum(_loop_grads(model, spec.loss, x, y), groups, 5)
    norms = torch.cat([g.reshape(5, -1) for g in per_user], dim=1).norm(dim=1)
    clip = float(norms.median())
    expected = clip_and_sum(per_user, clip)
    clipper = make_clipper(method, model, spec.loss)

    # Execute / Assert
    if not clipper.materializes and method != "linear_ghost":
        with pytest.raises(InvalidInputError, match="per user"):
            clipper.clipped_group_sum(x, y, groups, 5, clip)
        clipper.close()
        return
    got = clipper.clipped_group_sum(x, y, groups, 5, clip)
    empty = clipper.clipped_group_sum(x[:0], y[:0], groups[:0], 0, clip)
    clipper.close()
    assert (norms > clip).any() and (norms < clip).any()
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    assert all(not s.any() for s in empty)


def test_group_gram_in_row_chunks_gives_the_same_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: chunks of 5 rows over 24 examples (the production chunk is 1,024 rows).
    spec = get_task("compliance_checks")
    x, y = spec.encode(firm_records("compliance_checks", n=24))
    groups = torch.arange(24) % 4
    model = spec.build_model(seed=2)
    whole = make_clipper("linear_ghost", model, spec.loss).clipped_group_sum(x, y, groups, 4, 0.3)

    # Execute
    monkeypatch.setattr("fl_client.per_sample._GRAM_CHUNK", 5)
    chunked = make_clipper("linear_ghost", model, spec.loss).clipped_group_sum(x, y, groups, 4, 0.3)

    # Assert
    for g, e in zip(chunked, whole, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
