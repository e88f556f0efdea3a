"""DP events: what one privacy-spending mechanism did, as a frozen, validated value.

The DP kinds are a Poisson-subsampled Gaussian mechanism composed ``steps`` times, so one
accountant serves both; they differ in what is sampled and who adds the noise:

- ``DpSgdEvent``: DP-SGD run by a tenant node. Each step samples the tenant's units (records at
  record level, users at user level: ``unit``) with rate ``q``, clips each unit's gradient and
  adds Gaussian noise of standard deviation ``z`` x clip norm. ``steps`` is the number of steps.
- ``CentralDpEvent``: tenant-level central DP at the server. Each round samples tenants with
  rate ``q``, clips each tenant's update to norm ``clip_norm`` and adds Gaussian noise of
  standard deviation ``z`` x ``clip_norm`` to the sum. ``rounds`` is the number of rounds. The
  amplification by sampling holds only if every round's event is charged to every tenant of the
  population, sampled or not. Its unit is always the tenant.
- ``NonPrivateEvent``: an explicitly non-private release (a ``dp=off`` run, the only mode where
  a server seed is honoured). Its epsilon is +inf: nothing bounds what such an update reveals, so
  the honest entry is "unbounded", and a ledger holding one is exhausted for good in its unit. It
  is the operator's explicit choice, so the ledger records it without a cap check (refusing it
  would only hide the release), and it is audited like every other charge.

Every event names its **unit of privacy** (``record``, ``user`` or ``tenant``): what two
neighbouring data sets differ in. Epsilons of different units never compose into one number, so a
ledger is kept per (organization, model type, unit).

Values are validated on construction; a bad one raises ``InvalidInputError`` with one line that
says what is wrong, so nothing downstream ever sees an invalid event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

from schema.errors import InvalidInputError

#: Units of privacy: what one DP guarantee protects.
UNIT_RECORD = "record"
UNIT_USER = "user"
UNIT_TENANT = "tenant"
UNITS: tuple[str, ...] = (UNIT_RECORD, UNIT_USER, UNIT_TENANT)
LOCAL_UNITS: tuple[str, ...] = (UNIT_RECORD, UNIT_USER)

#: The largest number of steps (or rounds) one event may record (a 32-bit column holds it).
MAX_STEPS = 1_000_000_000


def check_noise_multiplier(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"noise multiplier {value} must be a finite number > 0")
    return float(value)


def check_sample_rate(value: float) -> float:
    if not math.isfinite(value) or not 0 < value <= 1:
        raise InvalidInputError(f"sample rate {value} must be in (0, 1]; e.g. batch size / dataset size")
    return float(value)


def check_steps(value: int, what: str = "steps") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{what} {value!r} must be a whole number")
    if not 0 <= value <= MAX_STEPS:
        raise InvalidInputError(f"{what} {value} must be between 0 and {MAX_STEPS}")
    return value


def check_delta(value: float) -> float:
    if not math.isfinite(value) or not 0 < value < 1:
        raise InvalidInputError(f"delta {value} must be in (0, 1); e.g. 1e-5, below 1 / number of records")
    return float(value)


def check_unit(value: str, allowed: tuple[str, ...] = UNITS) -> str:
    if value not in allowed:
        raise InvalidInputError(f"unit of privacy '{value}' is unknown; use one of: {', '.join(allowed)}")
    return value


def check_epsilon(value: float, what: str = "epsilon") -> float:
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{what} {value} must be a finite number > 0")
    return float(value)


@dataclass(frozen=True)
class DpSgdEvent:
    """DP-SGD at a tenant: noise multiplier z, sample rate q of the unit, steps T, and the unit."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    unit: str = UNIT_RECORD

    mechanism: ClassVar[str] = "dp_sgd"
    clip_norm: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        check_steps(self.steps)
        check_unit(self.unit, LOCAL_UNITS)


@dataclass(frozen=True)
class CentralDpEvent:
    """Tenant-level central DP at the server: z, tenant sample rate q per round, rounds, clip norm C."""

    noise_multiplier: float
    sample_rate: float
    rounds: int
    clip_norm: float

    mechanism: ClassVar[str] = "central_gaussian"
    unit: ClassVar[str] = UNIT_TENANT

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        check_steps(self.rounds, "rounds")
        if not math.isfinite(self.clip_norm) or self.clip_norm <= 0:
            raise InvalidInputError(f"clip norm {self.clip_norm} must be a finite number > 0")
        object.__setattr__(self, "clip_norm", float(self.clip_norm))

    @property
    def steps(self) -> int:
        """Compositions of the subsampled Gaussian: one per round."""
        return self.rounds

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise the server adds to the sum of clipped updates."""
        return self.noise_multiplier * self.clip_norm


@dataclass(frozen=True)
class NonPrivateEvent:
    """An explicitly non-private release (``dp=off``): epsilon +inf in ``unit``, never cap-checked.

    Stored as noise multiplier 0, sample rate 1, one step: the Gaussian mechanism without noise,
    whose privacy loss is unbounded; every accountant here maps it to +inf.
    """

    unit: str

    mechanism: ClassVar[str] = "non_private"
    clip_norm: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        check_unit(self.unit)

    @property
    def noise_multiplier(self) -> float:
        return 0.0

    @property
    def sample_rate(self) -> float:
        return 1.0

    @property
    def steps(self) -> int:
        return 1


DpEvent = DpSgdEvent | CentralDpEvent | NonPrivateEvent


class SubsampledGaussian(Protocol):
    """What an accountant reads of an event: z, q and the number of compositions.

    Both event kinds satisfy it, and so does a ledger row read with those three columns.
    """

    @property
    def noise_multiplier(self) -> float: ...

    @property
    def sample_rate(self) -> float: ...

    @property
    def steps(self) -> int: ...


MECHANISMS: tuple[str, ...] = (DpSgdEvent.mechanism, CentralDpEvent.mechanism, NonPrivateEvent.mechanism)


def is_non_private(event: SubsampledGaussian) -> bool:
    """No noise: the release's privacy loss is unbounded (epsilon +inf)."""
    return event.noise_multiplier == 0.0


def event_from_row(
    mechanism: str,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    clip_norm: float | None,
    unit: str = UNIT_RECORD,
) -> DpEvent:
    """Rebuild an event from its stored columns (the ledger's rows)."""
    if mechanism == DpSgdEvent.mechanism:
        return DpSgdEvent(noise_multiplier, sample_rate, steps, unit)
    if mechanism == CentralDpEvent.mechanism and clip_norm is not None:
        return CentralDpEvent(noise_multiplier, sample_rate, steps, clip_norm)
    if mechanism == NonPrivateEvent.mechanism:
        return NonPrivateEvent(unit)
    raise InvalidInputError(
        f"mechanism '{mechanism}' (clip norm {clip_norm}) is not a known event; use one of: {', '.join(MECHANISMS)}"
    )
