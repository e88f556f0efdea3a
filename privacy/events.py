"""DP events: what one privacy-spending mechanism did, as a frozen, validated value.

Both kinds are a Poisson-subsampled Gaussian mechanism composed ``steps`` times, so one accountant
serves both; they differ in what is sampled and who adds the noise:

- ``DpSgdEvent``: example-level DP-SGD run by a tenant node (Opacus). Each step samples the
  tenant's examples with rate ``q``, clips per-example gradients and adds Gaussian noise of
  standard deviation ``z`` x clip norm. ``steps`` is the number of optimizer steps.
- ``CentralDpEvent``: tenant-level central DP at the server. Each round samples tenants with
  rate ``q``, clips each tenant's update to norm ``clip_norm`` and adds Gaussian noise of
  standard deviation ``z`` x ``clip_norm`` to the sum. ``rounds`` is the number of rounds. The
  amplification by sampling holds only if every round's event is charged to every tenant of the
  population, sampled or not.

Values are validated on construction; a bad one raises ``InvalidInputError`` with one line that
says what is wrong, so nothing downstream ever sees an invalid event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

from schema.errors import InvalidInputError

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


def check_epsilon(value: float, what: str = "epsilon") -> float:
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{what} {value} must be a finite number > 0")
    return float(value)


@dataclass(frozen=True)
class DpSgdEvent:
    """Example-level DP-SGD at a tenant: noise multiplier z, example sample rate q, steps T."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    mechanism: ClassVar[str] = "dp_sgd"
    clip_norm: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        check_steps(self.steps)


@dataclass(frozen=True)
class CentralDpEvent:
    """Tenant-level central DP at the server: z, tenant sample rate q per round, rounds, clip norm C."""

    noise_multiplier: float
    sample_rate: float
    rounds: int
    clip_norm: float

    mechanism: ClassVar[str] = "central_gaussian"

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


DpEvent = DpSgdEvent | CentralDpEvent


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


MECHANISMS: tuple[str, ...] = (DpSgdEvent.mechanism, CentralDpEvent.mechanism)


def event_from_row(
    mechanism: str, noise_multiplier: float, sample_rate: float, steps: int, clip_norm: float | None
) -> DpEvent:
    """Rebuild an event from its stored columns (the ledger's rows)."""
    if mechanism == DpSgdEvent.mechanism:
        return DpSgdEvent(noise_multiplier, sample_rate, steps)
    if mechanism == CentralDpEvent.mechanism and clip_norm is not None:
        return CentralDpEvent(noise_multiplier, sample_rate, steps, clip_norm)
    raise InvalidInputError(
        f"mechanism '{mechanism}' (clip norm {clip_norm}) is not a known event; use one of: {', '.join(MECHANISMS)}"
    )
