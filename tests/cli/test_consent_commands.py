"""`accute-fl consent ...` and `accute-fl dsr ...` on each backend, including every bad-input path."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.cli.conftest import Runner
from tests.cli.test_admin_commands import one_line_error

FL = ("ai_training", "federated_learning", "vamn_contribution")


def setup_tenant(cli: Runner, name: str, users: int = 2, consents: tuple[str, ...] = FL) -> dict[str, Any]:
    org = cli("org", "create", "--name", name, "--json").json()
    ids = []
    for n in range(users):
        user = cli(
            "user", "create", "--org", org["id"], "--email", f"u{n}@{name.lower()}.example.com", "--json"
        )
        ids.append(user.json()["id"])
        for consent_type in consents:
            granted = cli("consent", "grant", "--org", org["id"], "--user", ids[-1], "--type", consent_type)
            assert granted.code == 0, granted.err
    return {"id": org["id"], "users": ids}


def snapshot(cli: Runner, org: str, model_type: str = "digits") -> dict[str, Any]:
    result = cli("consent", "snapshot", "--org", org, "--model-type", model_type, "--json")
    assert result.code == 0, result.err
    return result.json()  # type: ignore[no-any-return]


def state(cli: Runner, org: str) -> tuple[Any, ...]:
    """Everything a command could have written: audit records (every write appends one), consents, requests."""
    return (
        cli("audit", "verify", "--json").json(),
        cli("consent", "show", "--org", org, "--json").json(),
        cli("dsr", "list", "--json").json(),
    )


def test_grant_withdraw_show_and_snapshot(ready_cli: Runner) -> None:
    # Prepare
    tenant = setup_tenant(ready_cli, "Flow")
    first = snapshot(ready_cli, tenant["id"])

    # Execute
    withdrawn = ready_cli(
        "consent",
        "withdraw",
        "--org",
        tenant["id"],
        "--user",
        tenant["users"][0],
        "--type",
        "ai_training",
        "--json",
    )
    second = snapshot(ready_cli, tenant["id"])
    shown = ready_cli("consent", "show", "--org", tenant["id"], "--user", tenant["users"][0], "--json").json()

    # Assert
    assert withdrawn.code == 0 and withdrawn.json()["consent_given"] is False
    assert {"organization_id", "model_type", "user_ids", "digest"} <= set(first)
    assert first["organization_id"] == tenant["id"] and first["model_type"] == "digits"
    assert sorted(first["user_ids"]) == sorted(tenant["users"]) == first["user_ids"]
    assert second["user_ids"] == [tenant["users"][1]]
    assert second["digest"] != first["digest"] and len(second["digest"]) == 64
    assert {c["consent_type"]: c["consent_given"] for c in shown["consents"]} == {
        "ai_training": False,
        "federated_learning": True,
        "vamn_contribution": True,
    }
    assert [h["action"] for h in shown["history"]] == ["granted", "granted", "granted", "withdrawn"]
    assert (
        "Consent snapshot"
        in ready_cli("consent", "snapshot", "--org", tenant["id"], "--model-type", "digits").out
    )
    assert "History" in ready_cli("consent", "show", "--org", tenant["id"], "--user", tenant["users"][0]).out
    assert all(chain["ok"] for chain in ready_cli("audit", "verify", "--json").json())


def test_grant_with_version_and_repeat(ready_cli: Runner) -> None:
    tenant = setup_tenant(ready_cli, "Versioned", users=1, consents=())
    args = ("consent", "grant", "--org", tenant["id"], "--user", tenant["users"][0], "--type", "marketing")
    assert ready_cli(*args, "--version", "3.2", "--json").json()["consent_version"] == "3.2"
    assert ready_cli(*args, "--version", "3.2", "--json").json()["changed"] is False
    assert ready_cli(*args, "--json").json()["consent_version"] == "1.0"


def test_organization_consents_are_every_users_consents(ready_cli: Runner) -> None:
    """`consent show --org` (Core reads) lists what `--user` (the ORM) lists for each user, in
    user then consent type order, and only this organization's."""
    # Prepare
    tenant = setup_tenant(ready_cli, "Listed", users=3)
    setup_tenant(ready_cli, "Elsewhere", users=1)
    ready_cli(
        "consent", "withdraw", "--org", tenant["id"], "--user", tenant["users"][1], "--type", "ai_training"
    )

    # Execute
    listed = ready_cli("consent", "show", "--org", tenant["id"], "--json").json()
    per_user = [
        ready_cli("consent", "show", "--org", tenant["id"], "--user", user, "--json").json()["consents"]
        for user in tenant["users"]
    ]

    # Assert
    expected = sorted(
        (c for consents in per_user for c in consents), key=lambda c: (c["user_id"], c["consent_type"])
    )
    assert listed == {"organization_id": tenant["id"], "consents": expected}
    assert len(expected) == 9 and sum(not c["consent_given"] for c in expected) == 1


def test_dsr_file_list_and_process(ready_cli: Runner) -> None:
    # Prepare
    tenant = setup_tenant(ready_cli, "Requests")
    user = tenant["users"][0]

    # Execute
    filed = ready_cli("dsr", "file", "--org", tenant["id"], "--user", user, "--type", "erasure", "--json")
    after_filing = snapshot(ready_cli, tenant["id"])
    access = ready_cli(
        "dsr", "file", "--org", tenant["id"], "--user", user, "--type", "access", "--json"
    ).json()
    pending = ready_cli("dsr", "list", "--org", tenant["id"], "--status", "pending", "--json").json()
    exported = ready_cli("dsr", "process", access["id"], "--json")
    erased = ready_cli("dsr", "process", filed.json()["id"], "--org", tenant["id"], "--json")
    completed = ready_cli("dsr", "list", "--status", "completed", "--json").json()

    # Assert
    assert filed.code == 0, filed.err
    request = filed.json()
    assert {"id", "deadline"} <= set(request) and request["status"] == "pending"
    deadline = datetime.fromisoformat(request["deadline"]) - datetime.fromisoformat(request["created_at"])
    assert deadline == timedelta(days=30)
    assert user not in after_filing["user_ids"]  # excluded from the moment it is filed
    assert {r["id"] for r in pending} == {request["id"], access["id"]}
    assert exported.code == 0, exported.err
    export = exported.json()["response_details"]["export"]
    assert export["user"]["email"] == "u0@requests.example.com"
    assert len(export["consent_history"]) == 3
    assert erased.code == 0, erased.err
    assert erased.json()["response_details"]["erased"]["email"] == "anonymized"
    assert {r["id"] for r in completed} == {request["id"], access["id"]}
    users = ready_cli("user", "list", "--org", tenant["id"], "--json").json()
    assert next(u for u in users if u["id"] == user)["email"].endswith("@erased.invalid")
    assert "Data subject requests" in ready_cli("dsr", "list").out


def test_process_reject_and_reprocess(ready_cli: Runner) -> None:
    tenant = setup_tenant(ready_cli, "Reject", users=1)
    filed = ready_cli(
        "dsr", "file", "--org", tenant["id"], "--user", tenant["users"][0], "--type", "objection", "--json"
    )
    request_id = filed.json()["id"]
    rejected = ready_cli("dsr", "process", request_id, "--reject", "no grounds", "--json").json()
    again = ready_cli("dsr", "process", request_id)
    assert rejected["status"] == "rejected"
    assert rejected["response_details"] == {"rejected": "no grounds"}
    assert again.code == 4 and one_line_error(again) and "already rejected" in again.err
    assert snapshot(ready_cli, tenant["id"])["user_ids"] == tenant["users"]


BAD_INPUTS: list[tuple[str, tuple[str, ...], int, str]] = [
    (
        "unknown consent type",
        ("consent", "grant", "--org", "{org}", "--user", "{user}", "--type", "newsletter"),
        2,
        "use one of: data_processing, ai_training",
    ),
    (
        "unknown consent type on withdraw",
        ("consent", "withdraw", "--org", "{org}", "--user", "{user}", "--type", "x"),
        2,
        "use one of:",
    ),
    (
        "unknown user",
        ("consent", "grant", "--org", "{org}", "--user", "{nobody}", "--type", "ai_training"),
        3,
        "does not exist in organization",
    ),
    (
        "user of another organization",
        ("consent", "grant", "--org", "{org}", "--user", "{stranger}", "--type", "ai_training"),
        3,
        "does not exist in organization",
    ),
    (
        "unknown organization",
        ("consent", "grant", "--org", "{nobody}", "--user", "{user}", "--type", "ai_training"),
        3,
        "organization",
    ),
    ("unknown organization name", ("consent", "show", "--org", "zzz"), 3, "no organization is named 'zzz'"),
    (
        "bad user id",
        ("consent", "withdraw", "--org", "{org}", "--user", "12", "--type", "ai_training"),
        2,
        "not a UUID",
    ),
    (
        "show another tenant's user",
        ("consent", "show", "--org", "{org}", "--user", "{stranger}"),
        3,
        "does not exist in organization",
    ),
    (
        "withdraw never given",
        ("consent", "withdraw", "--org", "{org}", "--user", "{user}", "--type", "marketing"),
        3,
        "never gave consent",
    ),
    (
        "empty version",
        ("consent", "grant", "--org", "{org}", "--user", "{user}", "--type", "marketing", "--version", " "),
        2,
        "empty",
    ),
    (
        "unknown model type",
        ("consent", "snapshot", "--org", "{org}", "--model-type", "digitz"),
        2,
        "not known",
    ),
    (
        "snapshot of unknown organization",
        ("consent", "snapshot", "--org", "{nobody}", "--model-type", "digits"),
        3,
        "does not exist",
    ),
    (
        "missing policy file",
        (
            "consent",
            "snapshot",
            "--org",
            "{org}",
            "--model-type",
            "digits",
            "--policy",
            "/nonexistent/p.toml",
        ),
        2,
        "cannot read consent policy",
    ),
    (
        "unknown request type",
        ("dsr", "file", "--org", "{org}", "--user", "{user}", "--type", "deletion"),
        2,
        "use one of: access, rectification, erasure",
    ),
    (
        "request for another tenant's user",
        ("dsr", "file", "--org", "{org}", "--user", "{stranger}", "--type", "erasure"),
        3,
        "does not exist in organization",
    ),
    ("unknown status", ("dsr", "list", "--status", "open"), 2, "use one of: pending"),
    ("list unknown organization", ("dsr", "list", "--org", "{nobody}"), 3, "does not exist"),
    ("show unknown organization", ("consent", "show", "--org", "{nobody}"), 3, "does not exist"),
    ("process unknown request", ("dsr", "process", "{nobody}"), 3, "does not exist"),
    (
        "process another tenant's request",
        ("dsr", "process", "{other_request}", "--org", "{org}"),
        3,
        "does not exist",
    ),
    (
        "processed by another tenant's user",
        ("dsr", "process", "{other_request}", "--by", "{user}"),
        3,
        "does not exist in organization",
    ),
    ("rectification without email", ("dsr", "process", "{rectification}"), 2, "needs the corrected email"),
    (
        "missing option",
        ("consent", "grant", "--org", "{org}", "--user", "{user}"),
        2,
        "Missing option '--type'",
    ),
]


@pytest.mark.parametrize(("case", "args", "code", "fragment"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_error_and_nothing_written(
    ready_cli: Runner, case: str, args: tuple[str, ...], code: int, fragment: str
) -> None:
    # Prepare
    mine = setup_tenant(ready_cli, "Mine", users=1)
    other = setup_tenant(ready_cli, "Other", users=1)
    other_request = ready_cli(
        "dsr", "file", "--org", other["id"], "--user", other["users"][0], "--type", "erasure", "--json"
    ).json()
    rectification = ready_cli(
        "dsr", "file", "--org", mine["id"], "--user", mine["users"][0], "--type", "rectification", "--json"
    ).json()
    values = {
        "org": mine["id"],
        "user": mine["users"][0],
        "stranger": other["users"][0],
        "nobody": str(uuid.UUID(int=99)),
        "other_request": other_request["id"],
        "rectification": rectification["id"],
    }
    before = (state(ready_cli, mine["id"]), state(ready_cli, other["id"]))

    # Execute
    result = ready_cli(*(a.format(**values) for a in args))

    # Assert
    assert result.code == code, result.err
    assert one_line_error(result), result.err
    assert fragment in result.err
    if case != "processed by another tenant's user":  # no --org there: the request names its tenant
        assert other["id"] not in result.err  # nothing tells which tenant a stranger belongs to
    assert (state(ready_cli, mine["id"]), state(ready_cli, other["id"])) == before
