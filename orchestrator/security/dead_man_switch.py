"""The dead man's switch as a pure state machine: given a configuration, the last heartbeat, when
the doom timer started and whether the switch already fired, what holds *now* and what to do.

No I/O and no clock of its own: the caller passes ``now`` (the watcher its clock, tests any
instant), so hours of waiting are one argument. ``orchestrator.security.dms_actions`` reads and
writes the rows and carries out the decision.

States, in order:

- ``disabled``: the switch is off (``is_active`` false); nothing happens.
- ``armed``: a heartbeat came within ``heartbeat_interval_hours``.
- ``doom``: the interval lapsed without a heartbeat. The doom timer starts when the watcher first
  sees the lapse (so a watcher that was down does not shorten the grace period it owes the admin);
  a heartbeat during the grace period disarms it.
- ``fire``: ``grace_period_hours`` passed since the doom timer started: run the configured actions.
- ``fired``: the actions ran and stay in force until a platform admin reverses them (a heartbeat
  alone does not undo them: whoever stole the admin's token could send one).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schema.timeutil import as_utc

DISABLED = "disabled"
ARMED = "armed"
DOOM = "doom"
FIRE = "fire"
FIRED = "fired"

PAUSE_TRAINING = "pause_training"
DISABLE_PROVIDERS = "disable_providers"
DISABLE_FALLBACK = "disable_fallback"
ROTATE_DATA_KEY = "rotate_data_key"
NOTIFY_CONTACTS = "notify_contacts"
#: What a firing can do, in the order it does it.
ACTIONS: tuple[str, ...] = (
    PAUSE_TRAINING,
    DISABLE_PROVIDERS,
    DISABLE_FALLBACK,
    ROTATE_DATA_KEY,
    NOTIFY_CONTACTS,
)

#: A year: a longer interval or grace period is a typo, not a policy.
MAX_HOURS = 24 * 366
MAX_CONTACTS = 20


class SwitchSettings(BaseModel):
    """What an organization configures (CLI ``dms configure``, ``PUT .../dead-man-switch``).

    Contacts are user ids of the organization, never addresses: the switch's audit records and
    hub events carry ids only, and the hub resolves them when it notifies.
    """

    model_config = ConfigDict(extra="forbid")

    admin_user_id: uuid.UUID = Field(
        description="The organization's user whose heartbeat keeps the switch armed."
    )
    heartbeat_interval_hours: int = Field(default=24, ge=1, le=MAX_HOURS)
    grace_period_hours: int = Field(default=48, ge=0, le=MAX_HOURS)
    actions: list[str] = Field(
        default_factory=lambda: list(ACTIONS), min_length=1, description=f"Any of: {', '.join(ACTIONS)}."
    )
    escalation_contacts: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_CONTACTS)
    recovery_instructions: str | None = Field(default=None, max_length=4000)
    is_active: bool = True

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, value: list[str]) -> list[str]:
        unknown = [a for a in value if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown action {unknown[0]!r}; use any of {', '.join(ACTIONS)}")
        return [a for a in ACTIONS if a in value]  # canonical order, duplicates gone

    @field_validator("escalation_contacts")
    @classmethod
    def _distinct_contacts(cls, value: list[uuid.UUID]) -> list[uuid.UUID]:
        return list(dict.fromkeys(value))


@dataclass(frozen=True)
class Schedule:
    """The part of a configuration the state machine needs."""

    heartbeat_interval_hours: int
    grace_period_hours: int
    is_active: bool = True


@dataclass(frozen=True)
class Decision:
    """The state at ``now`` and what the caller must do about it."""

    state: str
    doom_timer_started_at: datetime | None
    """The doom timer's start to store (``now`` when this decision starts it)."""
    start_doom_timer: bool
    fire: bool
    next_deadline: datetime | None
    """When the state changes next without a heartbeat (None once fired or disabled)."""


def evaluate(
    schedule: Schedule,
    last_heartbeat: datetime,
    doom_timer_started_at: datetime | None,
    fired: bool,
    now: datetime,
) -> Decision:
    """The switch's state at ``now`` (all datetimes aware or naive UTC; compared as UTC)."""
    now, last = as_utc(now), as_utc(last_heartbeat)
    started = as_utc(doom_timer_started_at) if doom_timer_started_at is not None else None
    if fired:
        return Decision(FIRED, started, False, False, None)
    if not schedule.is_active:
        return Decision(DISABLED, None, False, False, None)
    lapses = last + timedelta(hours=schedule.heartbeat_interval_hours)
    if started is not None and started < last:  # a heartbeat came after the timer started
        started = None
    if now < lapses and started is None:
        return Decision(ARMED, None, False, False, lapses)
    start_now = started is None
    started = started if started is not None else now
    fires_at = started + timedelta(hours=schedule.grace_period_hours)
    if now >= fires_at:
        return Decision(FIRE, started, start_now, True, None)
    return Decision(DOOM, started, start_now, False, fires_at)
