"""The dead man's switch's state machine: pure, so every instant is one argument."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from orchestrator.security import dead_man_switch as dms

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
DAY = dms.Schedule(heartbeat_interval_hours=24, grace_period_hours=48)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_within_the_interval_the_switch_is_armed_until_the_interval_lapses() -> None:
    decision = dms.evaluate(DAY, T0, None, False, at(23.9))
    assert decision.state == dms.ARMED and not decision.fire and not decision.start_doom_timer
    assert decision.next_deadline == at(24)


def test_the_first_look_after_the_interval_starts_the_doom_timer_at_that_moment() -> None:
    # A watcher that was down for two days does not shorten the grace period the admin is owed.
    decision = dms.evaluate(DAY, T0, None, False, at(72))
    assert decision.state == dms.DOOM and decision.start_doom_timer and not decision.fire
    assert decision.doom_timer_started_at == at(72) and decision.next_deadline == at(72 + 48)


def test_the_switch_fires_once_the_grace_period_after_the_doom_timer_passed() -> None:
    waiting = dms.evaluate(DAY, T0, at(25), False, at(25 + 47.9))
    due = dms.evaluate(DAY, T0, at(25), False, at(25 + 48))
    assert waiting.state == dms.DOOM and not waiting.start_doom_timer and not waiting.fire
    assert due.state == dms.FIRE and due.fire and due.doom_timer_started_at == at(25)


def test_a_heartbeat_after_the_doom_timer_started_disarms_it() -> None:
    # The stored timer predates the heartbeat (a watcher that has not cleared it yet).
    decision = dms.evaluate(DAY, at(30), at(25), False, at(40))
    assert decision.state == dms.ARMED and decision.doom_timer_started_at is None


def test_a_zero_grace_period_fires_on_the_look_that_notices_the_lapse() -> None:
    schedule = dms.Schedule(heartbeat_interval_hours=1, grace_period_hours=0)
    decision = dms.evaluate(schedule, T0, None, False, at(1))
    assert decision.fire and decision.start_doom_timer


def test_a_fired_switch_stays_fired_and_a_disabled_one_does_nothing() -> None:
    fired = dms.evaluate(DAY, at(500), None, True, at(501))
    off = dms.evaluate(dms.Schedule(1, 0, is_active=False), T0, None, False, at(1000))
    assert fired.state == dms.FIRED and not fired.fire
    assert off.state == dms.DISABLED and not off.fire and not off.start_doom_timer


def test_naive_and_aware_times_compare_as_utc() -> None:
    naive = T0.replace(tzinfo=None)
    assert dms.evaluate(DAY, naive, None, False, at(1)).state == dms.ARMED


def test_settings_put_actions_in_order_and_drop_duplicate_contacts() -> None:
    contact = uuid.uuid4()
    settings = dms.SwitchSettings(
        admin_user_id=uuid.uuid4(),
        actions=[dms.NOTIFY_CONTACTS, dms.PAUSE_TRAINING, dms.NOTIFY_CONTACTS],
        escalation_contacts=[contact, contact],
    )
    assert settings.actions == [dms.PAUSE_TRAINING, dms.NOTIFY_CONTACTS]
    assert settings.escalation_contacts == [contact]


@pytest.mark.parametrize(
    "fields",
    [
        {"actions": ["self_destruct"]},
        {"actions": []},
        {"heartbeat_interval_hours": 0},
        {"grace_period_hours": -1},
        {"heartbeat_interval_hours": dms.MAX_HOURS + 1},
        {"escalation_contacts": ["not-a-uuid"]},
        {"escalation_contacts": [str(uuid.uuid4()) for _ in range(dms.MAX_CONTACTS + 1)]},
        {"contacts_emails": ["a@b.example"]},
    ],
)
def test_settings_refuse_what_is_not_a_policy(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        dms.SwitchSettings.model_validate({"admin_user_id": str(uuid.uuid4()), **fields})
