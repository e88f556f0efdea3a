"""The report's plots: readable, honest about missing data, and with the references to judge by."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from fl_client.tasks import get_task
from simulations import outputs
from simulations.runner import metric_references, nothing_trained_reason


def _report(rounds: int, tenants: dict[str, float], metric: list[float | None]) -> dict[str, Any]:
    return {
        "config": {"task": "digits", "delta": 1e-5},
        "rounds": [
            {
                "round": r + 1,
                "metric": metric[r],
                "epsilon": {n: eps * (r + 1) / rounds for n, eps in tenants.items()},
            }
            for r in range(rounds)
        ],
        "tenants": {n: {"epsilon_spent": eps, "epsilon_cap": 8.0} for n, eps in tenants.items()},
    }


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions save, kept open so the test can read what was drawn."""
    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    return figures


def test_metric_plot_draws_chance_and_no_dp_lines(tmp_path: Path, captured: list[Any]) -> None:
    # Prepare
    report = _report(3, {"t-1": 1.0}, [0.5, 0.7, 0.8])
    references = {"chance": 0.1, "centralized, no DP": 0.97}
    # Execute
    outputs.plot_metric(tmp_path / "m.png", report, "accuracy", references)
    # Assert
    ax = captured[0].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "this run" in labels
    assert any(label.startswith("chance") for label in labels)
    assert any(label.startswith("centralized, no DP") for label in labels)
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert all(float(t).is_integer() for t in ticks)
    assert (tmp_path / "m.png").stat().st_size > 0


def test_metric_plot_without_values_says_no_data(tmp_path: Path, captured: list[Any]) -> None:
    outputs.plot_metric(tmp_path / "m.png", _report(2, {"t-1": 1.0}, [None, None]), "accuracy")
    texts = [t.get_text() for t in captured[0].axes[0].texts]
    assert any(t.startswith("no data") for t in texts)
    assert captured[0].axes[0].get_lines() == []


def test_overlapping_tenants_stay_distinguishable(tmp_path: Path, captured: list[Any]) -> None:
    # Prepare: three tenants with identical ε curves
    report = _report(3, {"t-1": 2.0, "t-2": 2.0, "t-3": 2.0}, [0.5, 0.6, 0.7])
    # Execute
    outputs.plot_epsilon(tmp_path / "e.png", report)
    # Assert: distinct markers and x positions, every tenant labelled at its line end, the cap labelled
    ax = captured[0].axes[0]
    tenant_lines = [line for line in ax.get_lines() if line.get_label().startswith("t-")]
    assert len({line.get_marker() for line in tenant_lines}) == 3
    assert len({tuple(line.get_xdata()) for line in tenant_lines}) == 3
    texts = {t.get_text() for t in ax.texts}
    assert {"t-1, t-2, t-3", "cap 8"} <= texts


def test_epsilon_plot_without_rounds_says_no_data(tmp_path: Path, captured: list[Any]) -> None:
    report = _report(0, {"t-1": 0.0}, [])
    outputs.plot_epsilon(tmp_path / "e.png", report)
    assert any(t.get_text().startswith("no data") for t in captured[0].axes[0].texts)


def test_references_name_chance_for_classifiers_and_the_sweep_baselines() -> None:
    sweep = [
        {"epsilon": 1.0, "federated_metric": 0.6, "centralized_metric": 0.8},
        {"epsilon": "inf", "federated_metric": 0.95, "centralized_metric": 0.97},
    ]
    references = metric_references(get_task("digits"), sweep)
    assert references == {"chance": pytest.approx(0.1), "federated, no DP": 0.95, "centralized, no DP": 0.97}
    assert "chance" not in metric_references(get_task("time_estimation"), [])


def test_a_run_that_trained_nothing_is_named_with_its_reasons() -> None:
    # Prepare
    idle = {
        "rounds": [{"statuses": {"rejected_budget": 2}}, {"statuses": {"rejected_budget": 1, "failed": 1}}]
    }
    busy = {"rounds": [{"statuses": {"rejected_budget": 1}}, {"statuses": {"accepted": 1}}]}
    # Execute / Assert
    assert (
        nothing_trained_reason(idle)
        == "no contribution was accepted in 2 round(s) (1 failed, 3 rejected_budget)"
    )
    assert (
        nothing_trained_reason({"rounds": [{"statuses": {}}]})
        == "no tenant took part in any of the 1 round(s)"
    )
    assert nothing_trained_reason(busy) is None


def test_report_md_says_in_words_that_nothing_was_trained(tmp_path: Path) -> None:
    report = _report(1, {"t-1": 0.0}, [None]) | {
        "final": {
            "metric": None,
            "model_name": "digits",
            "model_version": None,
            "deployment_status": None,
            "weights_checksum": "x",
        },
        "nothing_trained": "no contribution was accepted in 1 round(s) (1 rejected_budget)",
    }
    report["config"] |= {
        "run_name": "r",
        "rounds": 1,
        "fraction": 1.0,
        "dp": "local",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "sample_rate": 0.1,
        "steps": 5,
        "seed": 1,
    }
    outputs.write_markdown(tmp_path / "report.md", report, [], [], "accuracy")
    text = (tmp_path / "report.md").read_text()
    assert (
        "**This run trained nothing: no contribution was accepted in 1 round(s) (1 rejected_budget).**"
        in text
    )


def _config(dp: str) -> dict[str, Any]:
    return {
        "run_name": "r",
        "task": "digits",
        "rounds": 2,
        "fraction": 0.5,
        "dp": dp,
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "sample_rate": 0.1,
        "steps": 5,
        "central_noise_multiplier": 3.25,
        "central_clip_norm": 0.75,
        "seed": 1,
        "delta": 1e-5,
    }


def test_report_md_headline_is_the_held_out_metric_with_the_train_metric_beside_it(tmp_path: Path) -> None:
    # Prepare
    report = _report(2, {"t-1": 0.0}, [0.5, 0.9]) | {
        "final": {
            "metric": 0.9,
            "test_metric": 0.9,
            "train_metric": 0.97,
            "metric_round": 2,
            "test_set": {"records": 360, "source": "fixed public split"},
            "model_name": "digits",
            "model_version": "r.r2",
            "deployment_status": "active",
            "weights_checksum": "x",
        }
    }
    report["config"] = _config("off")

    # Execute
    outputs.write_markdown(tmp_path / "report.md", report, [], [], "accuracy")

    # Assert
    text = (tmp_path / "report.md").read_text()
    assert "Held-out accuracy: **0.9** on the server's test set (360 records" in text
    assert "Train accuracy (pooled training records): 0.97" in text


def test_report_md_for_central_dp_shows_the_central_parameters_not_the_local_ones(tmp_path: Path) -> None:
    # Prepare
    report = _report(1, {"t-1": 0.0}, [0.5]) | {
        "final": {
            "metric": 0.5,
            "model_name": "digits",
            "model_version": None,
            "deployment_status": None,
            "weights_checksum": "x",
        }
    }
    report["config"] = _config("central")

    # Execute
    outputs.write_markdown(tmp_path / "report.md", report, [], [], "accuracy")

    # Assert
    text = (tmp_path / "report.md").read_text()
    assert "central Gaussian z=3.25, C=0.75" in text
    assert "z=1.1" not in text and "DP-SGD" not in text
