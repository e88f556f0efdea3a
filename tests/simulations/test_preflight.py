"""Pre-flight: rounds times per-round ε against every tenant's remaining budget, before Flower starts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, func, select

from privacy import ledger
from schema.db import transaction
from schema.errors import InvalidInputError
from schema.models import FlRun, Organization
from simulations import preflight
from simulations.runner import SimulationResult
from simulations.scenario import SimulationSpec

Run = Callable[..., SimulationResult]


def test_a_simulation_no_tenant_can_pay_for_is_refused_before_anything_is_written(
    run_sim: Run, engine: Engine
) -> None:
    # Execute: one round at z=1.2 costs about 1.1; every cap is 0.2.
    with pytest.raises(InvalidInputError) as refused:
        run_sim(dp="local", rounds=2, noise_multiplier=1.2, epsilon_cap=0.2)

    # Assert: one line with the numbers, exit 2, and nothing written.
    message = str(refused.value)
    assert refused.value.exit_code == 2
    assert "\n" not in message
    assert message.startswith("pre-flight: no tenant can pay for one round: a round costs ε ")
    assert "cap 0.2" in message and "--fresh-tenants" in message
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(Organization)) == 0
        assert session.scalar(select(func.count()).select_from(FlRun)) == 0


def test_tenants_that_will_be_benched_are_warned_about_and_a_spent_tenant_is_projected_from_its_ledger(
    run_sim: Run, engine: Engine
) -> None:
    # Prepare: a first run spends the seed's tenants' ledgers.
    first = run_sim(run_name="spender", dp="local", rounds=2, noise_multiplier=1.2, tenants=2)
    spec = SimulationSpec(
        run_name="next",
        dp="local",
        rounds=4,
        noise_multiplier=1.2,
        tenants=2,
        steps=10,
        sample_rate=0.1,
        caps=["tenant-1=3"],
    )
    config = spec.run_config()
    names = [(f"tenant-{i}", f"{spec.org_prefix()}tenant-{i}") for i in range(2)]
    policy = ledger.LedgerPolicy(default_delta=1e-5)

    # Execute
    outlook = {
        f.tenant: f for f in preflight.forecast(engine, config, names, {"tenant-1": 3.0}, 1e-5, policy)
    }
    warnings = preflight.check(list(outlook.values()), config.rounds)
    fresh = spec.model_copy(update={"fresh_tenants": True})
    fresh_names = [(f"tenant-{i}", f"{fresh.org_prefix()}tenant-{i}") for i in range(2)]
    fresh_outlook = preflight.forecast(engine, config, fresh_names, {"tenant-1": 3.0}, 1e-5, policy)

    # Assert: tenant-1 already spent about 2 of its new cap 3: it can pay for fewer rounds than asked.
    spent = first.main.report["tenants"]["tenant-1"]["epsilon_spent"]
    assert outlook["tenant-1"].epsilon_spent == pytest.approx(spent)
    assert outlook["tenant-1"].rounds_affordable < 4
    assert any(line.startswith("warning: tenant-1 can pay for") for line in warnings)
    # Fresh tenants start from empty ledgers.
    assert all(f.epsilon_spent == 0.0 for f in fresh_outlook)
    assert {f.tenant: f.rounds_affordable for f in fresh_outlook}["tenant-0"] == 4
