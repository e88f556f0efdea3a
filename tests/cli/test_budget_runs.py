"""`budget show|history`: organization names beside ids, the run each event belongs to, and
unknown model types refused."""

from __future__ import annotations

from collections.abc import Callable

from simulations.runner import SimulationResult
from tests.cli.conftest import Runner
from tests.simulations.conftest import run_sim  # noqa: F401 (the fixture)

Sim = Callable[..., SimulationResult]


def test_history_names_the_run_of_every_event_and_the_organization(
    ready_cli: Runner,
    run_sim: Sim,  # noqa: F811 (the fixture imported above)
) -> None:
    # Prepare: two local-DP runs and a central-DP run over the same tenants.
    run_sim(run_name="first", dp="local", rounds=1, noise_multiplier=2.0, tenants=2)
    run_sim(run_name="second", dp="local", rounds=1, noise_multiplier=2.0, tenants=2)
    run_sim(run_name="central", dp="central", rounds=1, noise_multiplier=2.0, tenants=2)

    # Execute
    history = ready_cli("budget", "history", "--org", "sim1-tenant-0", "--model-type", "digits", "--json")
    table = ready_cli("budget", "history", "--org", "sim1-tenant-0", "--model-type", "digits")
    budgets = ready_cli("budget", "show", "--json")

    # Assert
    assert history.code == 0, history.err
    rows = history.json()
    assert [(r["mechanism"], r["run"]) for r in rows] == [
        ("dp_sgd", "first"),
        ("dp_sgd", "second"),
        ("central_gaussian", "central"),
    ]
    assert {r["organization"] for r in rows} == {"sim1-tenant-0"}
    assert table.code == 0 and "second" in table.out and "run" in table.out
    assert budgets.code == 0
    shown = budgets.json()
    assert shown and {r["organization"] for r in shown} == {"sim1-tenant-0", "sim1-tenant-1"}
    assert all(r["organization_id"] for r in shown)


def test_an_unknown_model_type_is_refused_with_the_known_ones(ready_cli: Runner) -> None:
    # Prepare
    assert ready_cli("org", "create", "--name", "acme").code == 0

    # Execute
    result = ready_cli("budget", "history", "--org", "acme", "--model-type", "digitz")

    # Assert
    assert result.code == 2
    assert "unknown model type 'digitz'" in result.err and "digits" in result.err
    assert len(result.err.strip().splitlines()) == 1
