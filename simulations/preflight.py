"""Pre-flight: before Flower starts, how many rounds can each tenant pay for?

Each round charges the run's events (local DP-SGD in the run's unit, and/or the central Gaussian
in the tenant unit), composed on the tenant's ledger (``privacy.ledger.project``, never summed)
or, for a tenant not created yet, on an empty ledger at the spec's delta, against the cap the run
will find (the spec's cap, or the ledger's, or the platform default). Per ledger this gives the
number of charges ``k`` (at most ``rounds``) the tenant can pay for.

Sampling (``fraction``): the local event is charged only in the rounds a tenant is sampled, about
``fraction`` x ``rounds`` of them in expectation; the central event is charged to every admitted
tenant in every round, sampled or not. So:

- **refusal** (exact, exit 2): no tenant can pay for one round's events (``k`` = 0 on some ledger
  for every tenant) — nothing could train;
- **benched warning** (an expectation, and it says so): a tenant whose local ledger pays for ``L``
  rounds of training runs out after about ``L / fraction`` rounds, and its central ledger after
  ``C`` rounds; it is warned about when ``min(L / fraction, C)`` < ``rounds``, i.e. when it can pay
  for fewer sampled rounds than the ``fraction`` x ``rounds`` it is expected to be sampled in.

Advisory, like the filter's projection: the budget filter still decides each round. Nothing is
written: a refused simulation leaves the database as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
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
    #: Rounds of the run's events every ledger can pay for (0: not even one; at most ``rounds``).
    rounds_affordable: int
    epsilon_spent: float
    epsilon_cap: float
    epsilon_one_round: float
    #: Expected rounds of the run before the tenant is benched, given sampling (at most ``rounds``).
    rounds_expected: float = math.inf
    #: Rounds of training (local charges) its ledger pays for; None without local DP.
    training_affordable: int | None = None


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

            per_group = [_largest(partial(_fits, ledger_of, group), config.rounds) for group in groups]
            before, one, cap = ledger_of.after(1, groups[0])
            # The local group (first when present) is charged in sampled rounds only.
            training = per_group[0] if config.dp.local else None
            lasts = [
                (k / config.fraction if k < config.rounds else math.inf)
                if (config.dp.local and index == 0)
                else (k if k < config.rounds else math.inf)
                for index, k in enumerate(per_group)
            ]
            expected = min(min(lasts), float(config.rounds))
            out.append(Forecast(tenant, min(per_group), before, cap, one - before, expected, training))
    return out


def _fits(ledger_of: _Ledger, group: list[DpEvent], k: int) -> bool:
    _, spend, cap = ledger_of.after(k, group)
    return spend <= cap


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


def check(forecasts: Sequence[Forecast], rounds: int, fraction: float = 1.0) -> list[str]:
    """Warnings for tenants expected to be benched (given the sampling ``fraction``); refuses
    (exit 2) when no tenant can pay for one round."""
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
    short = [f for f in forecasts if f.rounds_expected < rounds]
    lines = [_benched(f, rounds, fraction) for f in short[:5]]
    if len(short) > 5:
        lines.append(f"warning: … and {len(short) - 5} more tenants are expected to be benched early")
    return lines


def _benched(f: Forecast, rounds: int, fraction: float) -> str:
    affordable = f.training_affordable if f.training_affordable is not None else f.rounds_affordable
    sampled = (
        "sampled every round"
        if fraction >= 1.0
        else f"sampled in about {fraction * rounds:.3g} of {rounds} rounds (fraction {fraction:g})"
    )
    after = math.floor(f.rounds_expected)
    when = "from the first round" if after == 0 else f"after about round {after}"
    return (
        f"warning: {f.tenant} can pay for {affordable} of {rounds} rounds (ε {_fmt(f.epsilon_one_round)} "
        f"per round; spent {_fmt(f.epsilon_spent)} of cap {_fmt(f.epsilon_cap)}); {sampled}, it is expected "
        f"to be benched {when}"
    )
