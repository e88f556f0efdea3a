"""`accute-fl db upgrade | downgrade | current` and `status` on each backend."""

from __future__ import annotations

from schema.migrate import head_revision
from tests.cli.conftest import Runner


def test_upgrade_on_empty_database_then_current_shows_head(cli: Runner) -> None:
    # Execute
    upgraded = cli("db", "upgrade")
    current = cli("db", "current", "--json")

    # Assert
    assert upgraded.code == 0, upgraded.err
    assert "up to date" in upgraded.err
    assert current.json() == {"revision": head_revision(), "head": head_revision(), "is_head": True}
    assert cli("db", "current").out.strip() == f"{head_revision()} (head)"


def test_upgrade_is_idempotent(ready_cli: Runner) -> None:
    again = ready_cli("db", "upgrade")
    assert again.code == 0
    assert f"{head_revision()} -> {head_revision()}" in again.err


def test_downgrade_to_base_then_upgrade(ready_cli: Runner) -> None:
    down = ready_cli("db", "downgrade", "--revision", "base", "--yes")
    assert down.code == 0, down.err
    assert ready_cli("db", "current", "--json").json()["revision"] is None
    assert ready_cli("db", "upgrade").code == 0
    assert ready_cli("db", "current", "--json").json()["is_head"] is True


def test_downgrade_without_yes_and_no_terminal_aborts_and_changes_nothing(ready_cli: Runner) -> None:
    result = ready_cli("db", "downgrade")
    assert result.code != 0
    assert result.err.startswith("error: ")
    assert ready_cli("db", "current", "--json").json()["is_head"] is True


def test_downgrade_to_unknown_revision_is_one_line_error(ready_cli: Runner) -> None:
    result = ready_cli("db", "downgrade", "--revision", "nonexistent", "--yes")
    assert result.code == 2
    assert result.err.count("\n") == 1 and result.err.startswith("error: ")
    assert ready_cli("db", "current", "--json").json()["is_head"] is True


def test_status_reports_counts_on_a_ready_database(ready_cli: Runner) -> None:
    ready_cli("org", "create", "--name", "Firm")
    status = ready_cli("status", "--json").json()
    assert status["schema_ready"] is True
    assert status["organizations"] == 1
    assert status["users"] == 0
    assert status["agent_routes"] == 12
    assert "***" in status["database"] or ":" not in status["database"].split("@")[0].split("//")[-1]


def test_commands_on_unmigrated_database_say_to_upgrade(cli: Runner) -> None:
    result = cli("org", "list")
    assert result.code == 5
    assert "accute-fl db upgrade" in result.err
    assert result.err.count("\n") == 1
