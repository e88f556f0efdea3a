"""report.json of a repeated run: this run's ε and events, not the tenants' lifetime ledger."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulations.runner import SimulationResult
from tests.simulations.test_validation import independent_epsilon

Run = Callable[..., SimulationResult]


def test_a_repeated_run_reports_its_own_epsilon_and_events_beside_the_lifetime_total(run_sim: Run) -> None:
    # Prepare: a first run spends on the same tenants (same seed: the same organizations).
    first = run_sim(run_name="first", dp="local", rounds=2, noise_multiplier=1.5, tenants=2)

    # Execute
    second = run_sim(run_name="second", dp="local", rounds=2, noise_multiplier=1.5, tenants=2)

    # Assert
    report = second.main.report
    delta = report["config"]["delta"]
    assert report["unit"] == report["config"]["privacy_unit"]
    for name, tenant in report["tenants"].items():
        before = first.main.report["tenants"][name]
        # This run's events only: as many as the first run charged, each of this run's rounds.
        assert len(tenant["dp_events"]) == len(before["dp_events"]) > 0
        assert {e["aggregation_round"] for e in tenant["dp_events"]} <= {1, 2}
        assert all(e["unit"] == report["unit"] for e in tenant["dp_events"])
        assert tenant["lifetime_dp_events"] == 2 * len(tenant["dp_events"])
        # An independent accountant replaying this run's events finds epsilon_run.
        assert tenant["epsilon_run"] == pytest.approx(
            independent_epsilon(tenant["dp_events"], delta), rel=1e-3
        )
        # Run-scoped and lifetime differ: the lifetime includes the first run (never a sum: composition).
        assert tenant["epsilon_run"] == pytest.approx(before["epsilon_run"], rel=1e-6)
        assert tenant["epsilon_spent"] > tenant["epsilon_run"]
        # Round 1's run-scoped ε is the first round's alone, not the lifetime value.
        round_one = report["rounds"][0]
        assert round_one["epsilon_run"][name] < round_one["epsilon"][name]
        assert report["rounds"][-1]["epsilon_run"][name] == pytest.approx(tenant["epsilon_run"])


def test_a_tenant_benched_for_budget_has_its_skipped_rounds_marked_and_spends_nothing_more(
    run_sim: Run,
) -> None:
    # Prepare / Execute: tenant-1 can afford one round only.
    result = run_sim(run_name="benched", dp="local", rounds=3, noise_multiplier=1.2, caps=["tenant-1=1.5"])

    # Assert
    tenant = result.main.report["tenants"]["tenant-1"]
    assert tenant["rounds_skipped"], tenant
    rounds = result.main.report["rounds"]
    for number in tenant["rounds_skipped"]:
        assert "tenant-1" in rounds[number - 1]["skipped"]
    charged_rounds = {e["aggregation_round"] for e in tenant["dp_events"]}
    assert not charged_rounds & set(tenant["rounds_skipped"])
    assert tenant["epsilon_run"] <= 1.5
