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


def _cap_between(config_events: list, rounds: int, delta: float) -> float:  # type: ignore[type-arg]
    """A cap that pays for exactly ``rounds`` rounds of these events (midway to one more)."""
    from privacy import accounting

    low = accounting.epsilon(config_events * rounds, delta, "rdp")
    high = accounting.epsilon(config_events * (rounds + 1), delta, "rdp")
    return (low + high) / 2


@pytest.mark.parametrize(("affordable", "warned"), [(4, True), (6, False)])
def test_the_benched_warning_counts_the_rounds_a_tenant_is_expected_to_be_sampled_in(
    engine: Engine, affordable: int, warned: bool
) -> None:
    # Prepare: 10 rounds, half the tenants sampled per round: about 5 rounds of training each.
    spec = SimulationSpec(run_name="sampled", dp="local", rounds=10, fraction=0.5, tenants=1, steps=10)
    config = spec.run_config()
    (events,) = preflight.round_events(config)
    cap = _cap_between(events, affordable, 1e-5)
    policy = ledger.LedgerPolicy(default_delta=1e-5)

    # Execute
    outlook = preflight.forecast(
        engine, config, [("tenant-0", "not-created-yet")], {"tenant-0": cap}, 1e-5, policy
    )
    warnings = preflight.check(outlook, config.rounds, config.fraction)

    # Assert: 4 paid rounds of 5 expected: benched after about round 8, and the line says why;
    # 6 paid rounds cover the 5 expected: no warning (sampling every round would have warned).
    (forecast,) = outlook
    assert forecast.rounds_affordable == affordable
    assert forecast.rounds_expected == pytest.approx(min(affordable / 0.5, 10))
    assert forecast.rounds_affordable < config.rounds  # sampled every round, it would be benched
    if warned:
        (line,) = warnings
        assert line.startswith(f"warning: tenant-0 can pay for {affordable} of 10 rounds")
        assert "sampled in about 5 of 10 rounds (fraction 0.5)" in line
        assert line.endswith("expected to be benched after about round 8")
    else:
        assert warnings == []


def test_central_dp_is_charged_every_round_whatever_the_sampling_and_the_refusal_stays_exact(
    engine: Engine,
) -> None:
    # Prepare: central DP with q = 0.5; a cap that pays for 3 rounds of it, and one that pays for none.
    spec = SimulationSpec(run_name="central", dp="central", rounds=6, fraction=0.5, tenants=1, steps=10)
    config = spec.run_config()
    (events,) = preflight.round_events(config)
    policy = ledger.LedgerPolicy(default_delta=1e-5)
    tenant = [("tenant-0", "not-created-yet")]

    # Execute
    outlook = preflight.forecast(
        engine, config, tenant, {"tenant-0": _cap_between(events, 3, 1e-5)}, 1e-5, policy
    )
    warnings = preflight.check(outlook, config.rounds, config.fraction)
    broke = preflight.forecast(
        engine, config, tenant, {"tenant-0": _cap_between(events, 0, 1e-5)}, 1e-5, policy
    )

    # Assert: every admitted tenant pays the central event each round, so 3 of 6 rounds, not 6.
    assert outlook[0].rounds_expected == 3
    assert warnings and warnings[0].endswith("expected to be benched after about round 3")
    with pytest.raises(InvalidInputError, match=r"^pre-flight: no tenant can pay for one round"):
        preflight.check(broke, config.rounds, config.fraction)
