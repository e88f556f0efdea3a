"""`accute-fl dms ...`: configure, heartbeat, the watcher (its clock set with --now), reverse."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from schema.db import make_engine, transaction
from schema.models import ImmutableAuditLog
from tests.cli.conftest import Runner

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def _org_with_users(cli: Runner, name: str) -> tuple[str, str, str]:
    org = cli("org", "create", "--name", name, "--json").json()["id"]
    admin = cli("user", "create", "--org", org, "--email", f"admin@{name}.example", "--json").json()["id"]
    contact = cli("user", "create", "--org", org, "--email", f"partner@{name}.example", "--json").json()["id"]
    return org, admin, contact


def test_a_missed_heartbeat_fires_once_and_the_operator_reverses_it(ready_cli: Runner) -> None:
    # Prepare: a switch configured at T0 (1 h interval, 2 h grace), a second org's switch that keeps beating.
    cli = ready_cli
    org, admin, contact = _org_with_users(cli, "lapsed")
    other, other_admin, _ = _org_with_users(cli, "alive")
    common = ("--interval-hours", "1", "--grace-hours", "2", "--json")
    configured = cli(
        "dms", "configure", "--org", org, "--admin-user", admin, "--contact", contact,
        "--action", "pause_training", "--action", "disable_fallback", "--action", "notify_contacts",
        "--now", at(0), *common,
    )  # fmt: skip
    cli("dms", "configure", "--org", other, "--admin-user", other_admin, "--now", at(0), *common)

    # Execute: the watcher looks at 1.5 h (doom), the other org beats at 3 h, then looks at 3.6 h
    # (fire), and at 3.9 h (nothing more).
    doom = cli("dms", "watch", "--once", "--now", at(1.5), "--json")
    cli("dms", "heartbeat", "--org", other, "--now", at(3))
    fired = cli("dms", "watch", "--once", "--now", at(3.6), "--json")
    again = cli("dms", "watch", "--once", "--now", at(3.9), "--json")
    shown = cli("dms", "show", "--org", "lapsed", "--now", at(4), "--json")
    reversed_ = cli("dms", "reverse", "--org", org, "--json")
    twice = cli("dms", "reverse", "--org", org, "--json")
    after = cli("dms", "show", "--org", org, "--json")

    # Assert
    assert configured.code == 0, configured.err
    assert configured.json()["actions"] == ["pause_training", "disable_fallback", "notify_contacts"]
    assert configured.json()["escalation_contacts"] == [contact]
    assert sorted(d["state"] for d in doom.json()) == ["doom", "doom"]
    assert [(f["organization_id"], f["state"]) for f in fired.json()] == [(org, "fired")]
    firing = fired.json()[0]["firing"]
    assert firing["training_paused"] and firing["fallback_disabled"] and not firing["providers_disabled"]
    assert firing["rotated_key_version"] is None and firing["notified_contacts"] == 1
    assert again.code == 0 and again.json() == []
    assert shown.json()["state"] == "fired"
    assert reversed_.code == 0 and reversed_.json()["undone"] == ["pause_training", "disable_fallback"]
    assert twice.code == 0 and twice.json()["reversed"] is False
    assert after.json()["state"] == "armed" and after.json()["firing"] is None


@pytest.mark.parametrize(
    ("extra", "code", "fragment"),
    [
        (("--action", "self_destruct"), 2, "unknown action"),
        (("--interval-hours", "0"), 2, "heartbeat_interval_hours"),
        (("--contact", "not-a-uuid"), 2, "contact user id"),
        (("--now", "yesterday"), 2, "ISO 8601"),
    ],
)
def test_bad_configurations_are_one_line_input_errors(
    ready_cli: Runner, extra: tuple[str, ...], code: int, fragment: str
) -> None:
    org, admin, _ = _org_with_users(ready_cli, "acme")
    result = ready_cli("dms", "configure", "--org", org, "--admin-user", admin, *extra)
    assert result.code == code and fragment in result.err and result.err.count("\n") == 1


def test_a_contact_of_another_organization_and_a_missing_switch_are_refused(ready_cli: Runner) -> None:
    org, admin, _ = _org_with_users(ready_cli, "one")
    _, _, stranger = _org_with_users(ready_cli, "two")
    foreign = ready_cli("dms", "configure", "--org", org, "--admin-user", admin, "--contact", stranger)
    missing = ready_cli("dms", "heartbeat", "--org", org)
    assert foreign.code == 2 and "is not a user of organization" in foreign.err
    assert missing.code == 3 and "dms configure" in missing.err


def test_without_the_kek_here_the_rotation_fails_audited_and_the_other_actions_apply(
    ready_cli: Runner, database_url: str
) -> None:
    # Prepare: a switch with every action; then the KEK file is not on this host.
    org, admin, contact = _org_with_users(ready_cli, "nokek")
    ready_cli(
        "dms", "configure", "--org", org, "--admin-user", admin, "--contact", contact,
        "--interval-hours", "1", "--grace-hours", "0", "--now", at(0),
    )  # fmt: skip
    kek = Path(os.environ["ACCUTE_KEK_FILE"])
    kek.unlink()

    # Execute
    fired = ready_cli("dms", "watch", "--once", "--now", at(2), "--json")

    # Assert: fired, paused and disabled, no rotation, no stray KEK made; the failure is audited.
    assert fired.code == 0, fired.err
    firing = fired.json()[0]["firing"]
    assert firing["training_paused"] and firing["providers_disabled"] and firing["fallback_disabled"]
    assert firing["rotated_key_version"] is None and firing["notified_contacts"] == 1
    assert not kek.exists()
    engine = make_engine(database_url)
    try:
        with transaction(engine) as session:
            actions = list(
                session.scalars(
                    select(ImmutableAuditLog.action).where(ImmutableAuditLog.action.like("dms.%"))
                )
            )
    finally:
        engine.dispose()
    assert "dms.data_key_rotation_failed" in actions and "dms.data_key_rotated" not in actions
