"""`accute-fl org ...` and `accute-fl user ...`, including every bad-input path."""

from __future__ import annotations

import uuid

import pytest

from tests.cli.conftest import Runner


def one_line_error(result: object) -> bool:
    err: str = result.err  # type: ignore[attr-defined]
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_org_create_and_list(ready_cli: Runner) -> None:
    created = ready_cli("org", "create", "--name", "Smith & Co CPAs", "--json")
    assert created.code == 0, created.err
    org = created.json()
    assert org["name"] == "Smith & Co CPAs"
    assert uuid.UUID(org["id"])
    assert org["billing_model"] == "pay_as_you_go"

    listed = ready_cli("org", "list", "--json").json()
    assert [o["id"] for o in listed] == [org["id"]]
    assert "Smith & Co CPAs" in ready_cli("org", "list").out


def test_org_list_is_empty_list_on_fresh_database(ready_cli: Runner) -> None:
    assert ready_cli("org", "list", "--json").json() == []


def test_user_create_and_list(ready_cli: Runner) -> None:
    org = ready_cli("org", "create", "--name", "Acme", "--json").json()
    user = ready_cli("user", "create", "--org", org["id"], "--email", "Ann@Example.com", "--json").json()
    assert user["organization_id"] == org["id"]
    assert user["email"] == "ann@example.com"
    assert set(user) >= {"id", "organization_id", "email"}
    listed = ready_cli("user", "list", "--org", org["id"], "--json").json()
    assert [u["id"] for u in listed] == [user["id"]]


def test_users_are_scoped_to_their_organization(ready_cli: Runner) -> None:
    a = ready_cli("org", "create", "--name", "A", "--json").json()
    b = ready_cli("org", "create", "--name", "B", "--json").json()
    ready_cli("user", "create", "--org", a["id"], "--email", "same@example.com")
    # The same address may exist in another tenant; listing never crosses tenants.
    assert ready_cli("user", "create", "--org", b["id"], "--email", "same@example.com").code == 0
    assert len(ready_cli("user", "list", "--org", a["id"], "--json").json()) == 1
    assert len(ready_cli("user", "list", "--org", b["id"], "--json").json()) == 1


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("org", "create"), 2, "Missing option '--name'"),
        (("org", "create", "--name", "   "), 2, "empty"),
        (("org", "create", "--name", "x" * 300), 2, "limit is 255"),
        (("org", "create", "--name", "ok", "--billing-model", "free"), 2, "pay_as_you_go"),
        (("user", "create", "--org", "not-a-uuid", "--email", "a@b.co"), 3, "no organization is named"),
        (("user", "create", "--org", str(uuid.UUID(int=7)), "--email", "a@b.co"), 3, "does not exist"),
        (("user", "list", "--org", str(uuid.UUID(int=7))), 3, "does not exist"),
        (("user", "list"), 2, "Missing option '--org'"),
        (("org", "frobnicate"), 2, "No such command"),
        (("audit", "verify", "--org", "zzz"), 3, "no organization is named 'zzz'"),
    ],
)
def test_bad_input_is_one_line_error_and_nothing_written(
    ready_cli: Runner, args: tuple[str, ...], code: int, fragment: str
) -> None:
    result = ready_cli(*args)
    assert result.code == code, result.err
    assert one_line_error(result), result.err
    assert fragment in result.err
    assert ready_cli("org", "list", "--json").json() == []


def test_bad_email_and_duplicates_are_refused(ready_cli: Runner) -> None:
    org = ready_cli("org", "create", "--name", "Dup", "--json").json()
    bad = ready_cli("user", "create", "--org", org["id"], "--email", "not-an-email")
    assert bad.code == 2 and one_line_error(bad)
    assert ready_cli("user", "create", "--org", org["id"], "--email", "x@example.com").code == 0
    dup_user = ready_cli("user", "create", "--org", org["id"], "--email", "X@example.com")
    assert dup_user.code == 4 and one_line_error(dup_user)
    dup_org = ready_cli("org", "create", "--name", "Dup")
    assert dup_org.code == 4 and one_line_error(dup_org)
    assert len(ready_cli("user", "list", "--org", org["id"], "--json").json()) == 1


def test_admin_changes_are_audited_and_verify(ready_cli: Runner) -> None:
    org = ready_cli("org", "create", "--name", "Audited", "--json").json()
    ready_cli("user", "create", "--org", org["id"], "--email", "a@example.com")
    chains = ready_cli("audit", "verify", "--json").json()
    assert chains == [
        {
            "organization_id": org["id"],
            "records": 2,
            "ok": True,
            "first_bad_id": None,
            "reason": None,
            "reanchors": 0,
            "unsigned_reanchors": [],
        }
    ]


def test_org_option_takes_a_name_or_an_id(ready_cli: Runner) -> None:
    # Prepare
    org = ready_cli("org", "create", "--name", "Baker & Sons LLP", "--json").json()
    ready_cli("user", "create", "--org", org["id"], "--email", "ann@example.com")
    # Execute
    by_name = ready_cli("user", "list", "--org", "Baker & Sons LLP", "--json")
    missing = ready_cli("user", "list", "--org", "Nobody LLP", "--json")
    # Assert
    assert by_name.code == 0, by_name.err
    assert [u["organization_id"] for u in by_name.json()] == [org["id"]]
    assert (
        missing.code == 3
        and one_line_error(missing)
        and "no organization is named 'Nobody LLP'" in missing.err
    )


def test_piped_tables_never_cut_ids_or_headers(ready_cli: Runner) -> None:
    # Prepare: a long name, so the natural table is far wider than 80 columns
    org = ready_cli("org", "create", "--name", "A very long firm name " * 4, "--json").json()
    # Execute
    out = ready_cli("org", "list").out
    # Assert: the full id, the full name and every header are printed
    assert org["id"] in out
    assert org["name"].strip() in out
    for header in ("id", "name", "billing_model", "created_at"):
        assert f" {header} " in out
    assert "…" not in out
