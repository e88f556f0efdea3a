"""Email indicators where an address enters the product: a listed address (or mail domain) gets no
user and no token (exit 6), audited without the address itself."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from schema.db import make_engine, transaction
from schema.models import ImmutableAuditLog, User
from tests.cli.conftest import Runner

FEED = (
    "indicator_type,indicator_value,threat_type,severity,source,confidence\n"
    "email,Mallory@Mail.Example,phishing,high,mail-feed,90\n"
    "email,@spam.example,spam,medium,mail-feed,70\n"
    "domain,evil.example,c2,critical,mail-feed,95\n"
)


def import_feed(cli: Runner, tmp_path: Path, text: str = FEED) -> None:
    feed = tmp_path / "mail.csv"
    feed.write_text(text)
    result = cli("threat", "import", str(feed), "--json")
    assert result.code == 0, result.err


def refusals(database_url: str) -> list[dict[str, str]]:
    engine = make_engine(database_url)
    with transaction(engine) as session:
        rows = session.scalars(
            select(ImmutableAuditLog).where(ImmutableAuditLog.action == "threat.email_refused")
        )
        found = [dict(r.action_data) for r in rows]
    engine.dispose()
    return found


def users(database_url: str) -> list[str]:
    engine = make_engine(database_url)
    with transaction(engine) as session:
        found = list(session.scalars(select(User.email).order_by(User.email)))
    engine.dispose()
    return found


def test_a_listed_address_or_mail_domain_gets_no_user(
    ready_cli: Runner, database_url: str, tmp_path: Path
) -> None:
    # Prepare
    org = ready_cli("org", "create", "--name", "Screened", "--json").json()["id"]
    import_feed(ready_cli, tmp_path)

    # Execute
    results = {
        address: ready_cli("user", "create", "--org", org, "--email", address)
        for address in (
            "MALLORY@mail.example",
            "bob@eu.spam.example",
            "carol@mx.evil.example",
            "alice@mail.example",
        )
    }

    # Assert: the three listed ones refused in one line (exit 6), the other created.
    for address in ("MALLORY@mail.example", "bob@eu.spam.example", "carol@mx.evil.example"):
        refused = results[address]
        assert refused.code == 6, (address, refused.err)
        assert refused.err.startswith("error: the email address is listed in threat intelligence")
        assert refused.err.count("\n") == 1
    assert results["alice@mail.example"].code == 0, results["alice@mail.example"].err
    assert users(database_url) == ["alice@mail.example"]
    logged = refusals(database_url)
    assert [r["indicator"] for r in logged] == [
        "email:<this address>",
        "email:@spam.example",
        "domain:evil.example",
    ]
    assert all(r["refused"] == "user.create" for r in logged)
    assert "mallory" not in str(logged).lower()  # the address itself never reaches the append-only log


def test_a_token_is_not_issued_for_a_user_whose_address_was_listed_later(
    ready_cli: Runner, database_url: str, tmp_path: Path
) -> None:
    # Prepare: two users, then a feed listing one of their addresses.
    org = ready_cli("org", "create", "--name", "Later", "--json").json()["id"]
    listed = ready_cli("user", "create", "--org", org, "--email", "mallory@mail.example", "--json").json()[
        "id"
    ]
    fine = ready_cli("user", "create", "--org", org, "--email", "alice@mail.example", "--json").json()["id"]
    before = ready_cli("token", "issue", "--role", "org_user", "--org", org, "--subject", listed)
    import_feed(ready_cli, tmp_path)

    # Execute
    refused = ready_cli("token", "issue", "--role", "org_user", "--org", org, "--subject", listed)
    issued = ready_cli("token", "issue", "--role", "org_user", "--org", org, "--subject", fine)
    service = ready_cli("token", "issue", "--role", "org_admin", "--org", org)

    # Assert
    assert before.code == 0, before.err
    assert refused.code == 6 and "listed in threat intelligence" in refused.err and refused.out == ""
    assert issued.code == 0 and issued.out.count(".") == 2  # a JWT
    assert service.code == 0
    assert [r["refused"] for r in refusals(database_url)] == ["token.issue"]


def test_a_dead_mans_switch_contact_whose_address_is_listed_is_refused(
    ready_cli: Runner, tmp_path: Path
) -> None:
    # Prepare: the contact was created before the feed listed its address.
    org = ready_cli("org", "create", "--name", "Switched", "--json").json()["id"]
    admin = ready_cli("user", "create", "--org", org, "--email", "admin@switched.example", "--json").json()[
        "id"
    ]
    contact = ready_cli("user", "create", "--org", org, "--email", "mallory@mail.example", "--json").json()[
        "id"
    ]
    other = ready_cli("user", "create", "--org", org, "--email", "alice@mail.example", "--json").json()["id"]
    import_feed(ready_cli, tmp_path)

    # Execute
    refused = ready_cli("dms", "configure", "--org", org, "--admin-user", admin, "--contact", contact)
    accepted = ready_cli("dms", "configure", "--org", org, "--admin-user", admin, "--contact", other)

    # Assert
    assert refused.code == 6 and f"user {contact} has an email address listed" in refused.err
    assert refused.err.count("\n") == 1
    assert accepted.code == 0, accepted.err
