"""The run configuration of a governed federated training run, validated once at the edge.

It arrives as Flower's flat run config (``[tool.flwr.app.config]`` or ``--run-config``), as TOML
from ``accute-fl simulate``, or as keyword arguments in tests; all go through ``RunConfig``.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aggregation import AGGREGATOR_KINDS
from schema.errors import InvalidInputError


class DpMode(StrEnum):
    OFF = "off"
    LOCAL = "local"
    CENTRAL = "central"
    BOTH = "both"

    @property
    def local(self) -> bool:
        return self in (DpMode.LOCAL, DpMode.BOTH)

    @property
    def central(self) -> bool:
        return self in (DpMode.CENTRAL, DpMode.BOTH)


class RunConfig(BaseModel):
    """Everything a run needs besides the database; frozen so every round sees the same values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_name: str = Field(min_length=1, max_length=100)
    task: str
    #: The DP defaults (rounds, noise_multiplier, clip_norm, sample_rate, steps, lr) are the digits
    #: validation task's (``fl_client.tasks.digits.DIGITS_DEFAULTS``), chosen by the sweep of
    #: bench/dp_quality_sweep.py (BENCHMARKS.md, "DP quality"): record-level local DP that reaches
    #: ~89 % held-out accuracy with 8 tenants at ε = 8; a run at these defaults costs each unit ε ≈ 8
    #: (δ = 1e-5).
    #: Other tasks (user level, other data sizes) should set their own.
    rounds: int = Field(default=20, ge=1, le=10_000)
    fraction: float = Field(default=1.0, gt=0, le=1)
    #: A round's aggregate is used only if at least this many updates were accepted.
    min_accepted: int = Field(default=1, ge=1)
    #: Nodes the run waits for before its first round.
    min_nodes: int = Field(default=1, ge=1)
    aggregator: str = "fedavg"
    dp: DpMode = DpMode.LOCAL
    noise_multiplier: float = Field(default=5.71, ge=0)
    clip_norm: float = Field(default=1.0, gt=0)
    sample_rate: float = Field(default=1.0, gt=0, le=1)
    steps: int = Field(default=4, ge=1)
    lr: float = Field(default=1.0, gt=0)
    central_noise_multiplier: float = Field(default=1.0, ge=0)
    central_clip_norm: float = Field(default=1.0, gt=0)
    #: The delta the run claims. The ledger evaluates at each tenant budget's own delta (never this
    #: one); a tenant whose budget delta is smaller than this sits the run out (rejected_budget).
    delta: float = Field(default=1e-5, gt=0, lt=1)
    #: Bound on ||update - global||; None accepts any finite update (DP bounds it anyway).
    max_update_norm: float | None = Field(default=None, gt=0)
    #: Seeds data partitioning and model initialisation; training noise and sampling only in dp=off
    #: runs (with DP on, no seed is sent and nodes draw from the OS CSPRNG).
    seed: int = Field(default=0, ge=0)
    round_timeout_s: float = Field(default=600.0, gt=0)
    model_name: str | None = Field(default=None, max_length=100)
    #: Unit of privacy of local DP-SGD; None: the task's default (``privacy_unit``).
    unit: Literal["record", "user"] | None = None
    #: Public denominator of a node's noisy step sum; None: derived by the server from the sample
    #: rate and the consent snapshot's size (a public quantity), never from a private record count.
    expected_batch_size: float | None = Field(default=None, gt=0)
    #: A public assumption, not a measurement: records per consented user, used only to derive the
    #: record-level ``expected_batch_size`` when it is unset. It sets the step size, never privacy.
    records_per_user: float = Field(default=20.0, gt=0)
    #: Share of each tenant's consented users held out for evaluation (never trained on).
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1)

    @field_validator("aggregator")
    @classmethod
    def _known_aggregator(cls, value: str) -> str:
        if value not in AGGREGATOR_KINDS:
            raise ValueError(f"unknown aggregator '{value}'; use one of {', '.join(AGGREGATOR_KINDS)}")
        return value

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from fl_client.tasks import get_task

        return get_task(value).name

    @property
    def privacy_unit(self) -> str:
        """What local DP-SGD protects: user level for the accounting model types, record level for
        the digits validation task (its synthetic users carry a handful of images each)."""
        if self.unit is not None:
            return self.unit
        return "record" if self.task == "digits" else "user"

    def expected_batch_size_for(self, consented_users: int) -> float:
        """The public denominator of a node's noisy step sum: the configured one, or the expected
        number of sampled units from public quantities only — users in the consent snapshot (known
        to the server) at user level, times the assumed ``records_per_user`` at record level. Never a
        node's private record count (dividing by that released it, issue 11); too small a value
        makes steps too large (record level with the user count alone diverged), too large a value
        only slows learning."""
        if self.expected_batch_size is not None:
            return self.expected_batch_size
        units = max(consented_users, 1) * (self.records_per_user if self.privacy_unit == "record" else 1.0)
        return max(1.0, self.sample_rate * units)

    @property
    def published_model_name(self) -> str:
        return self.model_name or self.task

    @classmethod
    def parse(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a flat mapping (Flower run config uses dashes; both spellings accepted)."""
        cleaned = {str(k).replace("-", "_"): v for k, v in values.items()}
        for optional in ("max_update_norm", "expected_batch_size", "unit"):
            if cleaned.get(optional) in (0, 0.0, "", None):
                cleaned.pop(optional, None)
        try:
            return cls(**cleaned)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first.get("loc", ())]
            if first.get("type") == "extra_forbidden" and loc:
                raise InvalidInputError(
                    f"run config has an unknown key '{loc[0].replace('_', '-')}'"
                ) from None
            if not loc:
                raise InvalidInputError(f"run config: {first['msg']}") from None
            key = loc[0]
            value = cleaned.get(key, first.get("input"))
            allowed = cls.allowed(key)
            why = f"allowed {allowed}" if allowed else str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInputError(
                f"run config {key.replace('_', '-')}={value!r} is invalid: {why}"
            ) from None

    @classmethod
    def allowed(cls, key: str) -> str | None:
        """The allowed values of a field in words (a numeric range or the choices), for errors."""
        field = cls.model_fields.get(key)
        if field is None:
            return None
        annotation = field.annotation
        choices = getattr(annotation, "__members__", None)
        if choices is not None:
            return "one of " + ", ".join(str(m.value) for m in choices.values())
        bounds = []
        for item in field.metadata:
            for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if getattr(item, attr, None) is not None:
                    bounds.append(f"{word} {getattr(item, attr)}")
        if not bounds:
            return None
        kind = "an integer" if annotation is int else "a number"
        return f"{kind} {' and '.join(bounds)}"

    def as_flower(self) -> dict[str, bool | int | float | str]:
        """The flat form Flower's run config carries (no None values)."""
        out: dict[str, bool | int | float | str] = {}
        for key, value in self.model_dump(mode="json").items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            out[key] = value
        return out
