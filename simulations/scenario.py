"""What `accute-fl simulate` runs: one validated spec from a TOML file and command-line overrides.

Everything is checked here, before anything is written: a bad value ends as one
``InvalidInputError`` line. ``SimulationSpec.run_config()`` turns the spec into the ``RunConfig``
the governed ServerApp runs (``--target-epsilon`` calibrated into a noise multiplier for the
whole run with ``privacy.accounting.noise_multiplier_for``).

Consent scenario (applied by ``simulations.runner`` from the ``on_round`` callback, which runs in
the server process between rounds):

- ``withdraw = ["ROUND:TENANT:COUNT"]``: after round ROUND, COUNT consenting users of TENANT
  withdraw every consent the task requires; snapshots from round ROUND+1 on leave them out.
- ``erasure = ["ROUND:TENANT"]``: after round ROUND, one consenting user of TENANT files an
  erasure request, which is processed at once (the user is excluded for good).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fl_server.config import DpMode, RunConfig
from schema.errors import InvalidInputError
from simulations.partitions import pool_count
from simulations.synthetic import DIGITS_TEST_SIZE, firm_user_ids

DIGITS_TRAIN_SIZE = 1797 - DIGITS_TEST_SIZE
#: The nodes' default held-out share of users (RunConfig.holdout_fraction).
HOLDOUT_FRACTION = 0.2

Partition = Literal["iid", "dirichlet", "size"]


@dataclass(frozen=True)
class Withdrawal:
    after_round: int
    tenant: int
    count: int


@dataclass(frozen=True)
class Erasure:
    after_round: int
    tenant: int


def tenant_index(name: str, tenants: int) -> int:
    prefix = "tenant-"
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        raise InvalidInputError(f"tenant '{name}' is not of the form tenant-K")
    index = int(name[len(prefix) :])
    if index >= tenants:
        raise InvalidInputError(f"tenant '{name}' does not exist: there are {tenants} tenants (tenant-0 …)")
    return index


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(f"{what} '{text}' is not a number") from None
    if math.isnan(value):
        raise InvalidInputError(f"{what} must be a number, not NaN")
    return value


def parse_caps(items: list[str]) -> dict[str, float]:
    """``["tenant-1=0.5", …]`` → ``{"tenant-1": 0.5}``."""
    caps: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--cap '{item}': expected tenant-K=EPSILON")
        caps[name.strip()] = _number(value.strip(), f"--cap {name}")
    return caps


def parse_sweep(text: str) -> list[float]:
    """``"epsilon=0.5,1,2,inf"`` → ``[0.5, 1.0, 2.0, inf]``."""
    key, sep, values = text.partition("=")
    if not sep or key.strip() != "epsilon":
        raise InvalidInputError(f"--sweep '{text}': expected epsilon=E1,E2,… (e.g. epsilon=0.5,1,2,4,8,inf)")
    points = [_number(v.strip(), "sweep epsilon") for v in values.split(",") if v.strip()]
    if not points:
        raise InvalidInputError("--sweep needs at least one epsilon")
    return points


class SimulationSpec(BaseModel):
    """A simulation: the federation (tenants, data, consent scenario) and the governed run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_name: str = Field(default="simulation", min_length=1, max_length=90)
    task: str = "digits"
    tenants: int = Field(default=5, ge=1, le=100_000)
    #: 20: DP learns with more rounds of fewer local steps (bench/dp_quality_sweep.py, issue 18).
    rounds: int = Field(default=20, ge=1, le=10_000)
    fraction: float = Field(default=1.0, gt=0, le=1)
    partition: Partition = "iid"
    alpha: float = Field(default=0.5, gt=0, le=1000)
    aggregator: str = "fedavg"
    dp: DpMode = DpMode.LOCAL
    noise_multiplier: float | None = Field(default=None, ge=0, le=1000)
    target_epsilon: float | None = Field(default=None, gt=0)
    clip: float | None = Field(default=None, gt=0)
    #: Central DP (``--dp central|both``): the server's Gaussian noise multiplier on the clipped sum
    #: of tenant updates, and the clip of each tenant's update (default: ``noise_multiplier`` / ``clip``).
    central_noise_multiplier: float | None = Field(default=None, gt=0, le=1000)
    central_clip: float | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, ge=1, le=100_000)
    sample_rate: float | None = Field(default=None, gt=0, le=1)
    lr: float | None = Field(default=None, gt=0)
    epsilon_cap: float | None = Field(default=None, gt=0)
    caps: dict[str, float] = Field(default_factory=dict)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    consent_share: float = Field(default=1.0, ge=0, le=1)
    withdraw: list[str] = Field(default_factory=list)
    erasure: list[str] = Field(default_factory=list)
    seed: int = Field(default=1, ge=1, le=2**31 - 1)
    out: str = "simulation-report"
    sweep: list[float] = Field(default_factory=list)
    #: New organizations for this run (named after it) instead of the seed's shared ones, whose
    #: ledgers earlier runs have spent: a repeatable run (the demo's default).
    fresh_tenants: bool = False

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from fl_client.tasks import get_task

        return get_task(value).name

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep_text(cls, value: Any) -> Any:
        return parse_sweep(value) if isinstance(value, str) else value

    @field_validator("caps", mode="before")
    @classmethod
    def _caps_list(cls, value: Any) -> Any:
        return parse_caps([str(v) for v in value]) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> SimulationSpec:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("give --noise-multiplier or --target-epsilon, not both")
        if self.target_epsilon is not None and (self.dp == DpMode.OFF or self.dp == DpMode.BOTH):
            raise ValueError("--target-epsilon needs --dp local or --dp central")
        if (
            self.central_noise_multiplier is not None or self.central_clip is not None
        ) and not self.dp.central:
            raise ValueError("--central-noise-multiplier and --central-clip need --dp central or --dp both")
        if (
            self.central_noise_multiplier is not None
            and self.target_epsilon is not None
            and self.dp == DpMode.CENTRAL
        ):
            raise ValueError("give --central-noise-multiplier or --target-epsilon, not both")
        if self.target_epsilon is not None and math.isinf(self.target_epsilon):
            raise ValueError("--target-epsilon must be finite (use --dp off for no privacy)")
        for name, cap in self.caps.items():
            tenant_index(name, self.tenants)
            if not (cap > 0 and math.isfinite(cap)):
                raise ValueError(f"--cap {name}: epsilon must be positive and finite, got {cap}")
        if self.epsilon_cap is not None and not math.isfinite(self.epsilon_cap):
            raise ValueError("--epsilon-cap must be finite")
        for point in self.sweep:
            if not point > 0:
                raise ValueError(f"sweep epsilon must be positive or inf, got {point}")
        self.withdrawals()
        self.erasures()
        RunConfig.parse(self._run_values(self.noise_multiplier or 1.0))
        return self

    # --- consent scenario ---------------------------------------------------------------------

    def consenting(self, index: int) -> int:
        return round(len(firm_user_ids(self.seed, index)) * self.consent_share)

    def _event_round(self, text: str, item: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise InvalidInputError(f"'{item}': ROUND '{text}' is not an integer") from None
        if not 1 <= value < self.rounds:
            raise InvalidInputError(
                f"'{item}': ROUND must be between 1 and {self.rounds - 1} (applied after that round)"
            )
        return value

    def withdrawals(self) -> list[Withdrawal]:
        events = []
        for item in self.withdraw:
            parts = item.split(":")
            if len(parts) != 3:
                raise InvalidInputError(f"--withdraw '{item}': expected ROUND:TENANT:COUNT")
            after = self._event_round(parts[0], item)
            index = tenant_index(parts[1], self.tenants)
            if not parts[2].isdigit() or int(parts[2]) < 1:
                raise InvalidInputError(f"--withdraw '{item}': COUNT must be a positive integer")
            events.append(Withdrawal(after, index, int(parts[2])))
        for index in {e.tenant for e in events}:
            wanted = sum(e.count for e in events if e.tenant == index) + sum(
                1 for e in self.erasures() if e.tenant == index
            )
            if wanted > self.consenting(index):
                raise InvalidInputError(
                    f"tenant-{index} has {self.consenting(index)} consenting users; "
                    f"the scenario removes {wanted}"
                )
        return sorted(events, key=lambda e: (e.after_round, e.tenant))

    def erasures(self) -> list[Erasure]:
        events = []
        for item in self.erasure:
            parts = item.split(":")
            if len(parts) != 2:
                raise InvalidInputError(f"--erasure '{item}': expected ROUND:TENANT")
            events.append(Erasure(self._event_round(parts[0], item), tenant_index(parts[1], self.tenants)))
        for event in events:
            if self.consenting(event.tenant) < 1:
                raise InvalidInputError(f"tenant-{event.tenant} has no consenting user to file an erasure")
        return sorted(events, key=lambda e: (e.after_round, e.tenant))

    def org_prefix(self) -> str:
        """Organization names of this simulation's tenants: ``sim{seed}-tenant-K``, shared by every
        run of the seed (their ledgers carry over), or ``sim{seed}-{run}-tenant-K`` when fresh."""
        return f"sim{self.seed}-{self.run_name}-" if self.fresh_tenants else f"sim{self.seed}-"

    def epsilon_caps(self) -> dict[int, float]:
        caps = {i: self.epsilon_cap for i in range(self.tenants)} if self.epsilon_cap is not None else {}
        caps |= {tenant_index(name, self.tenants): cap for name, cap in self.caps.items()}
        return {i: float(c) for i, c in caps.items() if c is not None}

    # --- the run --------------------------------------------------------------------------------

    def _run_values(self, noise_multiplier: float, central_noise: float = 1.0) -> dict[str, Any]:
        from fl_client.tasks import get_task

        defaults = get_task(self.task).defaults
        clip = self.clip if self.clip is not None else defaults.clip_norm
        return {
            "run_name": self.run_name,
            "task": self.task,
            "rounds": self.rounds,
            "fraction": self.fraction,
            "aggregator": self.aggregator,
            "dp": self.dp.value,
            "noise_multiplier": noise_multiplier,
            "clip_norm": clip,
            "sample_rate": self.sample_rate if self.sample_rate is not None else defaults.sample_rate,
            "steps": self.steps if self.steps is not None else defaults.steps,
            "lr": self.lr if self.lr is not None else defaults.lr,
            "central_noise_multiplier": central_noise,
            "central_clip_norm": self.central_clip if self.central_clip is not None else clip,
            "delta": self.delta,
            "seed": self.seed,
            "round_timeout_s": 600.0,
            # Every simulated SuperNode before round 1: Flower's engine registers 10,000 nodes while
            # the ServerApp starts, and a round sampling a fraction of the nodes registered so far
            # drew 2 instead of 10.
            "min_nodes": self.tenants,
            "expected_batch_size": self.expected_batch_size(
                self.sample_rate if self.sample_rate is not None else defaults.sample_rate
            ),
        }

    def expected_batch_size(self, sample_rate: float) -> float:
        """A public denominator for DP-SGD: q times a tenant's mean number of training records.

        The simulator made the data, so this is public here. Without it the server falls back to
        q times the consenting *users*, which at record level is far below the batch a node draws
        (digits firms have a few users and hundreds of records), and scales every step up by that
        ratio: training diverges (a non-private 3-tenant digits run stayed at chance).
        """
        from simulations.synthetic import firm_profile

        if self.task == "digits":
            # More tenants than training digits: tenants share pools of records (partitions.pooled).
            mean_records = DIGITS_TRAIN_SIZE / pool_count(DIGITS_TRAIN_SIZE, self.tenants)
        else:
            firms = range(min(self.tenants, 200))
            mean_records = sum(firm_profile(self.seed, i).n_records for i in firms) / len(firms)
        return max(1.0, sample_rate * mean_records * (1.0 - HOLDOUT_FRACTION))

    def run_config(self) -> RunConfig:
        """The governed run's config; ``--target-epsilon`` becomes the noise multiplier for all rounds."""
        from fl_client.tasks import get_task
        from privacy.accounting import noise_multiplier_for

        base = RunConfig.parse(self._run_values(1.0))
        z = (
            self.noise_multiplier
            if self.noise_multiplier is not None
            else get_task(self.task).defaults.noise_multiplier
        )
        central = self.central_noise_multiplier if self.central_noise_multiplier is not None else z
        if self.target_epsilon is not None:
            if self.dp == DpMode.LOCAL:
                z = noise_multiplier_for(
                    self.target_epsilon, base.sample_rate, base.steps * self.rounds, self.delta
                )
            else:
                central = noise_multiplier_for(self.target_epsilon, self.fraction, self.rounds, self.delta)
        return RunConfig.parse(self._run_values(z, central))

    def for_epsilon(self, epsilon: float, run_name: str) -> SimulationSpec:
        """The same simulation at another privacy level (``inf``: DP off); for sweeps."""
        values = self.model_dump() | {
            "run_name": run_name,
            "sweep": [],
            "noise_multiplier": None,
            "central_noise_multiplier": None,
        }
        if math.isinf(epsilon):
            values |= {"dp": DpMode.OFF, "target_epsilon": None, "central_clip": None}
        else:
            dp = self.dp if self.dp in (DpMode.LOCAL, DpMode.CENTRAL) else DpMode.LOCAL
            values |= {"dp": dp, "target_epsilon": epsilon}
            # The sweep measures accuracy at epsilon; caps must not stop it first.
            values |= {"epsilon_cap": None, "caps": {}}
        return SimulationSpec(**values)


def load_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("simulation", data)
    if not isinstance(section, dict):
        raise InvalidInputError(f"config file {path}: [simulation] must be a table")
    return {str(k).replace("-", "_"): v for k, v in section.items()}


def build_spec(values: dict[str, Any]) -> SimulationSpec:
    """The spec from merged file + flag values; the first problem as one line."""
    try:
        return SimulationSpec(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInputError(f"{where.replace('_', '-')}: {message}" if where else message) from None
