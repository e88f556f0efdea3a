"""Pre-flight: before Flower starts, how many rounds can each tenant pay for?

Each round charges a participating tenant the run's events (local DP-SGD in the run's unit,
and/or the central Gaussian in the tenant unit; every admitted tenant pays the central one). For
``k`` = 1 … rounds this projects ``k`` rounds of those events onto the tenant's ledger
(``privacy.ledger.project``, composed, never summed) or, for a tenant not created yet, onto an
empty ledger at the spec's delta, and compares with the cap the run will find (the spec's cap, or
the ledger's, or the platform default). Advisory, like the filter's projection: the budget filter
still decides each round; the projection assumes a tenant is sampled every round (with
``fraction`` < 1 it is an upper bound on the spend).

Nothing is written: a refused simulation leaves the database as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from fl_server.config import DpMode, RunConfig
from privacy import accounting, ledger
from privacy.events import CentralDpEvent, DpEvent, DpSgdEvent
from schema.db import transaction
from schema.errors import InvalidInputError
from schema.models import Organization


@dataclass(frozen=True)
class Forecast:
    """One tenant's outlook: rounds it can pay for out of the run's, and the numbers behind it."""

    tenant: str
    rounds_affordable: int
    epsilon_spent: float
    epsilon_cap: float
    epsilon_one_round: float


def round_events(config: RunConfig) -> list[list[DpEvent]]:
    """The events one round charges a participating tenant, grouped by ledger (unit)."""
    groups: list[list[DpEvent]] = []
    if config.dp.local:
        groups.append(
            [DpSgdEvent(config.noise_multiplier, config.sample_rate, config.steps, config.privacy_unit)]
        )
    if config.dp.central:
        groups.append(
            [CentralDpEvent(config.central_noise_multiplier, config.fraction, 1, config.central_clip_norm)]
        )
    return groups


def _largest(fits: Callable[[int], bool], high: int) -> int:
    """The largest k in [0, high] with fits(k) (fits is monotone: more rounds never cost less)."""
    low = 0
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def forecast(
    engine: Engine,
    config: RunConfig,
    tenants: Sequence[tuple[str, str]],
    caps: dict[str, float],
    delta: float,
    policy: ledger.LedgerPolicy,
) -> list[Forecast]:
    """``tenants``: (tenant name, organization name); ``caps``: the caps the simulation will set."""
    if config.dp == DpMode.OFF:
        return []
    groups = round_events(config)
    out: list[Forecast] = []
    with transaction(engine) as session:
        for tenant, org_name in tenants:
            organization = session.scalar(select(Organization).where(Organization.name == org_name))
            ledger_of = _Ledger(session, organization, config.task, caps.get(tenant), delta, policy)

            def fits(k: int, ledger_of: _Ledger = ledger_of) -> bool:
                return all(spend <= cap for _, spend, cap in (ledger_of.after(k, g) for g in groups))

            affordable = _largest(fits, config.rounds)
            before, one, cap = ledger_of.after(1, groups[0])
            out.append(Forecast(tenant, affordable, before, cap, one - before))
    return out


@dataclass(frozen=True)
class _Ledger:
    """One tenant's ledger as the run will find it (an organization not created yet: empty)."""

    session: Any
    organization: Organization | None
    task: str
    cap: float | None
    delta: float
    policy: ledger.LedgerPolicy

    def after(self, k: int, group: list[DpEvent]) -> tuple[float, float, float]:
        """(epsilon before, epsilon after k rounds of ``group``, cap) of one unit's ledger."""
        if self.organization is not None:
            projection = ledger.project(
                self.session, self.organization.id, self.task, group * max(k, 1), policy=self.policy
            )
            cap = self.cap if self.cap is not None else projection.epsilon_cap
            spend = projection.epsilon_after if k else projection.epsilon_before
            return projection.epsilon_before, spend, cap
        delta = self.delta if self.cap is not None else self.policy.default_delta
        spend = accounting.epsilon(group * k, delta, self.policy.accountant) if k else 0.0
        return 0.0, spend, self.cap if self.cap is not None else self.policy.default_epsilon_cap


def _fmt(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3g}"


def check(forecasts: Sequence[Forecast], rounds: int) -> list[str]:
    """Warnings for tenants that will be benched; refuses (exit 2) when no tenant can pay one round."""
    if not forecasts:
        return []
    if all(f.rounds_affordable == 0 for f in forecasts):
        worst = sorted(forecasts, key=lambda f: f.epsilon_cap - f.epsilon_spent, reverse=True)[0]
        raise InvalidInputError(
            f"pre-flight: no tenant can pay for one round: a round costs ε {_fmt(worst.epsilon_one_round)} "
            f"and the most any tenant has left is {_fmt(max(0.0, worst.epsilon_cap - worst.epsilon_spent))} "
            f"({worst.tenant}: spent {_fmt(worst.epsilon_spent)} of cap {_fmt(worst.epsilon_cap)}); "
            "use --fresh-tenants, a larger --epsilon-cap, or more noise (--noise-multiplier)"
        )
    short = [f for f in forecasts if f.rounds_affordable < rounds]
    lines = [
        f"warning: {f.tenant} can pay for {f.rounds_affordable} of {rounds} rounds (ε {_fmt(f.epsilon_one_round)} "
        f"per round; spent {_fmt(f.epsilon_spent)} of cap {_fmt(f.epsilon_cap)}): benched after that"
        for f in short[:5]
    ]
    if len(short) > 5:
        lines.append(f"warning: … and {len(short) - 5} more tenants will be benched early")
    return lines
