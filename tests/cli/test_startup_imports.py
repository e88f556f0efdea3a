"""Commands that neither train nor account with PRV start without the deep-learning stack.

Each command runs in a fresh interpreter (the tree on PYTHONPATH, a migrated SQLite file in a
temporary folder) through the real entry point; the interpreter then reports which heavy
packages ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.main import get_group

from consent_gate import dsr, records
from orchestrator.cli import main as cli_main
from orchestrator.cli.lazy import LazyGroup, command_help
from orchestrator.cli.output import RICH_ENVIRONMENT
from privacy import ledger
from privacy.events import DpSgdEvent
from schema import directory, migrate
from schema.db import make_engine, transaction

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "opacus", "flwr", "sklearn", "matplotlib", "ray")
COMMAND_MODULES = tuple(sorted({c.module for c in cli_main.COMMANDS.values()}))

# Runs the CLI in this interpreter, then writes the exit code and the loaded modules we care about.
PROBE = """
import json, os, sys
from orchestrator.cli.main import main
code = main(sys.argv[1:])
watched = [m for m in json.loads(os.environ["PROBE_WATCH"]) if m in sys.modules]
with open(os.environ["PROBE_OUT"], "w") as out:
    json.dump({"code": code, "loaded": watched}, out)
"""


@dataclass(frozen=True)
class Probe:
    code: int
    loaded: list[str]
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Tenant:
    url: str
    organization_id: str
    user_id: str
    folder: Path


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenant]:
    """A migrated SQLite file with one organization, a user, a consent, a budget with an event, a DSR."""
    folder = tmp_path_factory.mktemp("startup")
    url = f"sqlite:///{folder / 'cli.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    policy = ledger.LedgerPolicy()
    with transaction(engine) as session:
        org = directory.create_organization(session, "Startup & Co", "pay_as_you_go")
        user = directory.create_user(session, str(org.id), "ada@startup.example")
    with transaction(engine) as session:
        records.grant(session, str(org.id), str(user.id), "federated_learning", "v1")
        ledger.set_budget(session, str(org.id), "digits", 8.0, 1e-5, policy=policy)
        dsr.file_request(session, str(org.id), str(user.id), "access")
    with transaction(engine) as session:
        event = DpSgdEvent(noise_multiplier=1.1, sample_rate=0.01, steps=50)
        ledger.charge(session, str(org.id), "digits", event, aggregation_round=1, policy=policy)
    engine.dispose()
    yield Tenant(url, str(org.id), str(user.id), folder)


def probe(tenant: Tenant, args: list[str], watch: tuple[str, ...] = HEAVY) -> Probe:
    out = tenant.folder / "probe.json"
    out.unlink(missing_ok=True)
    # Output goes to a pipe; no variable asks rich to style or size it (as a script's pipe).
    kept = {k: v for k, v in os.environ.items() if not k.startswith("ACCUTE_") and k not in RICH_ENVIRONMENT}
    env = kept | {
        "PYTHONPATH": str(ROOT),
        "ACCUTE_DATABASE_URL": tenant.url,
        "PROBE_OUT": str(out),
        "PROBE_WATCH": json.dumps(list(watch)),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tenant.folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    return Probe(report["code"], report["loaded"], done.stdout, done.stderr)


def light_commands(tenant: Tenant) -> dict[str, list[str]]:
    org, user = tenant.organization_id, tenant.user_id
    return {
        "help": ["--help"],
        "budget show": ["budget", "show", "--json"],
        "budget show table": ["budget", "show"],
        "budget history": ["budget", "history", "--org", org, "--model-type", "digits", "--json"],
        "consent show": ["consent", "show", "--org", org, "--user", user],
        "consent show org": ["consent", "show", "--org", org],
        "dsr list": ["dsr", "list", "--json"],
        "org list": ["org", "list"],
        "user list": ["user", "list", "--org", org, "--json"],
        "audit verify": ["audit", "verify", "--json"],
        "audit anchors": ["audit", "anchors", "--json"],
        "dms watch": ["dms", "watch", "--once", "--json"],
        "privacy epsilon": [
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1.1",
            "--sample-rate",
            "0.01",
            "--steps",
            "100",
            "--delta",
            "1e-5",
            "--accountant",
            "rdp",
            "--json",
        ],
        "db current": ["db", "current", "--json"],
        "status": ["status", "--json"],
        "token issue": ["token", "issue", "--role", "org_admin", "--org", org],
        "hub status": ["hub", "status", "--json"],
        "hub dead": ["hub", "dead", "--json"],
        "threat list": ["threat", "list", "--json"],
    }


LIGHT = (
    "help",
    "budget show",
    "budget show table",
    "budget history",
    "consent show",
    "consent show org",
    "dsr list",
    "org list",
    "user list",
    "audit verify",
    "audit anchors",
    "dms watch",
    "privacy epsilon",
    "db current",
    "status",
    "token issue",
    "hub status",
    "hub dead",
    "threat list",
)


@pytest.mark.parametrize("name", LIGHT)
def test_command_runs_without_heavy_imports(tenant: Tenant, name: str) -> None:
    # Prepare
    args = light_commands(tenant)[name]

    # Execute
    result = probe(tenant, args)

    # Assert
    assert result.code == 0, result.stderr
    assert result.loaded == [], f"`accute-fl {' '.join(args)}` imported {result.loaded}"


def test_commands_report_what_they_read(tenant: Tenant) -> None:
    """The probes above ran real commands: their output is the tenant's data, not an empty shell."""
    commands = light_commands(tenant)

    budgets = json.loads(probe(tenant, commands["budget show"]).stdout)
    history = json.loads(probe(tenant, commands["budget history"]).stdout)
    requests = json.loads(probe(tenant, commands["dsr list"]).stdout)
    chains = json.loads(probe(tenant, commands["audit verify"]).stdout)
    epsilon = json.loads(probe(tenant, commands["privacy epsilon"]).stdout)
    token = probe(tenant, commands["token issue"]).stdout.strip().splitlines()[-1]

    # One budget per unit of privacy (record, tenant, user), each its own epsilon.
    assert sorted((b["organization_id"], b["model_type"], b["unit"]) for b in budgets) == [
        (tenant.organization_id, "digits", unit) for unit in ("record", "tenant", "user")
    ]
    assert budgets[0]["epsilon_spent"] > 0
    assert [e["aggregation_round"] for e in history] == [1]
    assert [r["request_type"] for r in requests] == ["access"]
    assert chains and all(c["ok"] for c in chains)
    assert 0 < epsilon["epsilon"] < 10
    assert token.count(".") == 2  # a JWT: header.claims.signature


def test_help_imports_no_command_module(tenant: Tenant) -> None:
    result = probe(tenant, ["--help"], watch=(*COMMAND_MODULES, "schema.models", "sqlalchemy.orm"))

    assert result.code == 0
    assert result.loaded == []
    for name in cli_main.COMMANDS:
        assert name in result.stdout


#: What a row-reading command does not need: the accountant's scipy, the models of tables it does
#: not read. (pydantic-settings stays: the brief fixes one pydantic-settings config class.)
NOT_FOR_ROWS = (
    "scipy",
    "schema.models.federation",
    "schema.models.orchestrator",
    "schema.models.vamn",
    "orchestrator.cli.privacy_audit_command",
)


@pytest.mark.parametrize(
    ("name", "models"),
    [
        ("budget show", []),
        ("user list", ["schema.models.organization"]),
        ("consent show", ["schema.models.organization"]),
    ],
)
def test_row_commands_load_only_what_they_read(tenant: Tenant, name: str, models: list[str]) -> None:
    # Prepare
    args = light_commands(tenant)[name]

    # Execute
    result = probe(tenant, args, watch=(*NOT_FOR_ROWS, "schema.models.organization"))

    # Assert
    assert result.code == 0, result.stderr
    assert result.loaded == models, f"`accute-fl {' '.join(args)}` imported {result.loaded}"


#: The listings of issue 16's start-up target that read with Core: not the ORM (about a third of
#: ``import sqlalchemy, typer`` by itself), no mapped class, not the consent gate or the cipher, and
#: (their tables go to a pipe here) not rich. ``budget show`` reads the ledger's budgets the same way
#: (``privacy.budget_status``), in JSON and as a table.
CORE_LISTINGS = ("org list", "dsr list", "consent show org", "budget show", "budget show table")
ORM_AND_FRIENDS = (
    "sqlalchemy.orm",
    "schema.base",
    "schema.models",
    "schema.directory",
    "consent_gate.gate",
    "consent_gate.records",
    "cryptography",
    "rich",
)


@pytest.mark.parametrize("name", CORE_LISTINGS)
def test_listings_never_import_the_orm(tenant: Tenant, name: str) -> None:
    # Prepare
    args = light_commands(tenant)[name]

    # Execute
    result = probe(tenant, args, watch=ORM_AND_FRIENDS)

    # Assert
    assert result.code == 0, result.stderr
    assert result.loaded == [], f"`accute-fl {' '.join(args)}` imported {result.loaded}"


def test_core_listings_print_the_rows(tenant: Tenant) -> None:
    """The ORM-free listings read the same rows the ORM wrote (ids, names, the consent)."""
    # Execute
    organizations = probe(tenant, ["org", "list", "--json"]).stdout
    requests = json.loads(probe(tenant, ["dsr", "list", "--org", tenant.organization_id, "--json"]).stdout)
    consents = json.loads(probe(tenant, [*light_commands(tenant)["consent show org"], "--json"]).stdout)
    table = probe(tenant, light_commands(tenant)["consent show org"]).stdout

    # Assert
    assert [(o["id"], o["name"]) for o in json.loads(organizations)] == [
        (tenant.organization_id, "Startup & Co")
    ]
    assert [(r["user_id"], r["status"], r["overdue"]) for r in requests] == [
        (tenant.user_id, "pending", False)
    ]
    assert consents["organization_id"] == tenant.organization_id
    assert [(c["user_id"], c["consent_type"], c["consent_given"]) for c in consents["consents"]] == [
        (tenant.user_id, "federated_learning", True)
    ]
    assert tenant.user_id in table and "federated_learning" in table


@pytest.mark.parametrize(
    ("name", "models"), [("budget show", []), ("user list", ["schema.models.audit_log"])]
)
def test_directory_commands_skip_the_other_platform_tables(
    tenant: Tenant, name: str, models: list[str]
) -> None:
    """Organizations, users and the audit chain have their own model modules: reading them does not
    build the sessions, invoices, security or LLM tables (``budget show`` builds no mapped class)."""
    # Prepare
    args = light_commands(tenant)[name]
    watched = (
        "schema.models.audit_log",
        "schema.models.llm",
        "schema.models.security",
        "schema.models.tenancy",
    )

    # Execute
    result = probe(tenant, args, watch=watched)

    # Assert
    assert result.code == 0, result.stderr
    assert result.loaded == models


def test_budget_show_loads_numpy_only_for_a_row_without_a_current_stored_epsilon(tenant: Tenant) -> None:
    """Every row's epsilon was stored by its charge or cap change under the current key, so
    ``budget show`` prints it without the accountant; ``budget history`` replays the events."""
    watch = ("numpy", "privacy.accounting", "scipy")
    org_list = probe(tenant, light_commands(tenant)["org list"], watch=watch)
    budgets = probe(tenant, light_commands(tenant)["budget show"], watch=watch)
    table = probe(tenant, light_commands(tenant)["budget show table"], watch=watch)
    history = probe(tenant, light_commands(tenant)["budget history"], watch=watch)

    assert org_list.loaded == []
    assert budgets.loaded == [] and table.loaded == []
    assert history.loaded == ["numpy", "privacy.accounting", "scipy"]  # it composes per-step curves


def test_budget_show_prints_the_ledgers_rows(tenant: Tenant) -> None:
    """The Core read of a fresh interpreter prints what the ledger's ORM session reads, byte for byte."""
    # Prepare
    from orchestrator.cli.privacy_commands import BUDGET_COLUMNS
    from privacy import budget_views

    engine = make_engine(tenant.url)
    try:
        with transaction(engine) as session:
            statuses = ledger.budget_rows(session, policy=ledger.LedgerPolicy())
            names = budget_views.organization_names(session, {s.organization_id for s in statuses})
    finally:
        engine.dispose()
    rows = [{"organization": names[s.organization_id], **s.as_dict()} for s in statuses]

    # Execute
    shown = probe(tenant, light_commands(tenant)["budget show"]).stdout
    table = probe(tenant, light_commands(tenant)["budget show table"]).stdout

    # Assert
    assert shown == json.dumps(rows, indent=2) + "\n"
    assert list(rows[0]) == list(BUDGET_COLUMNS)
    record = next(r for r in rows if r["unit"] == "record")
    assert record["epsilon_spent"] > 0 and f"{record['epsilon_spent']:.4g}" in table
    assert table.count(tenant.organization_id) == len(rows) and "Startup & Co" in table


def test_privacy_audit_is_listed_without_being_imported(tenant: Tenant) -> None:
    result = probe(tenant, ["privacy", "--help"], watch=("orchestrator.cli.privacy_audit_command", "scipy"))

    assert result.code == 0
    assert result.loaded == []
    assert "audit" in result.stdout


def test_privacy_audit_help_line_matches_the_command() -> None:
    from orchestrator.cli.privacy_commands import PRIVACY_LAZY

    spec = PRIVACY_LAZY["audit"]

    loaded = spec.load("audit")

    assert command_help(loaded) == spec.help


def test_a_command_imports_only_its_own_module(tenant: Tenant) -> None:
    result = probe(tenant, ["org", "list", "--json"], watch=COMMAND_MODULES)

    assert result.code == 0
    assert result.loaded == ["orchestrator.cli.admin_commands"]


def test_prv_accountant_still_loads_opacus_when_asked(tenant: Tenant) -> None:
    args = light_commands(tenant)["privacy epsilon"]
    args[args.index("rdp")] = "prv"

    result = probe(tenant, args, watch=("opacus",))

    assert result.code == 0, result.stderr
    assert result.loaded == ["opacus"]
    prv, rdp = (
        json.loads(result.stdout)["epsilon"],
        json.loads(probe(tenant, light_commands(tenant)["privacy epsilon"]).stdout)["epsilon"],
    )
    assert 0 < prv <= rdp


@pytest.mark.parametrize("name", sorted(cli_main.COMMANDS))
def test_registered_help_line_matches_the_command(name: str) -> None:
    """`--help` shows the registry's line without importing; it must say what the command says."""
    spec = cli_main.COMMANDS[name]

    loaded = spec.load(name)

    assert loaded.name == name
    assert command_help(loaded) == spec.help


def test_unknown_command_suggests_a_lazy_one(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main.main(["budgte", "show"])

    assert code == 2
    assert "Did you mean 'budget'" in capsys.readouterr().err


def test_root_group_is_lazy() -> None:
    group = get_group(cli_main.app)

    assert isinstance(group, LazyGroup)
    assert list(group.list_commands(None))[: len(cli_main.COMMANDS)] == list(cli_main.COMMANDS)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["hub status", "hub dead"])
def test_hub_operator_commands_leave_the_broker_client_alone(tenant: Tenant, name: str) -> None:
    """Only `hub relay` talks to RabbitMQ: the operator's commands read rows, not aio-pika."""
    # Prepare
    args = light_commands(tenant)[name]

    # Execute
    result = probe(tenant, args, watch=("aio_pika", "aiormq", "orchestrator.hub.amqp"))

    # Assert
    assert result.code == 0, result.stderr
    assert result.loaded == []


@pytest.mark.parametrize("name", ["org list", "budget show"])
def test_listings_build_only_the_tables_they_read(tenant: Tenant, name: str) -> None:
    """`org list` and `budget show` read no consent or DSR row: they build neither Core table."""
    # Prepare
    args = light_commands(tenant)[name]

    # Execute
    result = probe(tenant, args, watch=("schema.tables.consent", "schema.tables.organization"))

    # Assert
    assert result.code == 0, result.stderr
    assert result.loaded == ["schema.tables.organization"]


def test_the_console_script_loads_a_command_with_the_collector_paused_then_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``entrypoint`` imports the command with the collector off, freezes what the import made and
    turns collection back on before the command runs; ``main()`` itself leaves the collector alone."""
    import gc

    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    seen: list[bool] = []
    original = LazyGroup.load

    def load(self: LazyGroup, name: str) -> None:
        seen.append(gc.isenabled())
        original(self, name)

    monkeypatch.setattr(LazyGroup, "load", load)
    try:
        cli_main._load_uncollected(get_group(cli_main.app), "org")
        assert seen == [False]
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()
        gc.enable()
