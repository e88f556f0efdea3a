"""`accute-fl privacy ...` and `accute-fl budget ...` through the real entry point, on both backends."""

from __future__ import annotations

import uuid

import pytest

from privacy import accounting
from tests.cli.conftest import Result, Runner

MNIST = ("--sample-rate", str(256 / 60000), "--steps", "14062", "--delta", "1e-5")


def one_line_error(result: Result) -> bool:
    return result.err.startswith("error: ") and result.err.count("\n") == 1 and "Traceback" not in result.err


def make_org(cli: Runner) -> str:
    created = cli("org", "create", "--name", f"firm-{uuid.uuid4().hex[:6]}", "--json")
    assert created.code == 0, created.err
    org_id: str = created.json()["id"]
    return org_id


def test_privacy_epsilon_prints_the_accountants_value(cli: Runner) -> None:
    # Execute (no database needed)
    result = cli("privacy", "epsilon", "--noise-multiplier", "1.1", *MNIST, "--json")

    # Assert
    assert result.code == 0, result.err
    assert result.json() == {
        "epsilon": pytest.approx(accounting.mechanism_epsilon(1.1, 256 / 60000, 14062, 1e-5)),
        "delta": 1e-5,
        "accountant": "rdp",
    }
    assert result.json()["epsilon"] == pytest.approx(2.5966, abs=1e-4)
    table = cli("privacy", "epsilon", "--noise-multiplier", "1.1", *MNIST)
    assert table.code == 0 and "2.597" in table.out


def test_privacy_epsilon_with_prv_is_below_rdp(cli: Runner) -> None:
    rdp = cli("privacy", "epsilon", "--noise-multiplier", "1.1", *MNIST, "--json").json()
    prv = cli(
        "privacy", "epsilon", "--noise-multiplier", "1.1", *MNIST, "--accountant", "prv", "--json"
    ).json()
    assert prv["accountant"] == "prv"
    assert prv["epsilon"] < rdp["epsilon"]


def test_privacy_noise_meets_the_target(cli: Runner) -> None:
    # Execute
    result = cli("privacy", "noise", "--target-epsilon", "2.0", *MNIST, "--json")

    # Assert
    assert result.code == 0, result.err
    record = result.json()
    assert record["epsilon"] <= 2.0
    assert accounting.mechanism_epsilon(record["noise_multiplier"], 256 / 60000, 14062, 1e-5) <= 2.0
    assert record["noise_multiplier"] == pytest.approx(1.295, abs=0.005)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("privacy", "epsilon", "--noise-multiplier", "0", *MNIST), "noise multiplier"),
        (("privacy", "epsilon", "--noise-multiplier", "-1", *MNIST), "noise multiplier"),
        (
            (
                "privacy",
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0",
                "--steps",
                "1",
                "--delta",
                "1e-5",
            ),
            "sample rate",
        ),
        (
            (
                "privacy",
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "1.5",
                "--steps",
                "1",
                "--delta",
                "1e-5",
            ),
            "sample rate",
        ),
        (
            (
                "privacy",
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0.1",
                "--steps",
                "-3",
                "--delta",
                "1e-5",
            ),
            "steps",
        ),
        (
            (
                "privacy",
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0.1",
                "--steps",
                "3",
                "--delta",
                "0",
            ),
            "delta",
        ),
        (
            (
                "privacy",
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0.1",
                "--steps",
                "3",
                "--delta",
                "1",
            ),
            "delta",
        ),
        (("privacy", "epsilon", "--noise-multiplier", "x", *MNIST), "noise-multiplier"),
        (
            ("privacy", "epsilon", "--noise-multiplier", "1", *MNIST, "--accountant", "gdp"),
            "accountant 'gdp'",
        ),
        (("privacy", "noise", "--target-epsilon", "0", *MNIST), "target epsilon"),
        (
            (
                "privacy",
                "noise",
                "--target-epsilon",
                "1",
                "--sample-rate",
                "2",
                "--steps",
                "3",
                "--delta",
                "1e-5",
            ),
            "sample rate",
        ),
    ],
)
def test_bad_math_input_is_one_line_and_exit_2(cli: Runner, args: tuple[str, ...], fragment: str) -> None:
    result = cli(*args)
    assert result.code == 2
    assert one_line_error(result), result.err
    assert fragment in result.err
    assert result.out == ""


def test_budget_show_is_an_empty_list_on_a_fresh_database(ready_cli: Runner) -> None:
    assert ready_cli("budget", "show", "--json").json() == []
    assert "none" in ready_cli("budget", "show").out


def test_budget_set_show_and_history(ready_cli: Runner) -> None:
    # Prepare
    org = make_org(ready_cli)

    # Execute
    set_result = ready_cli(
        "budget",
        "set",
        "--org",
        org,
        "--model-type",
        "tax_rules",
        "--epsilon",
        "3",
        "--delta",
        "1e-6",
        "--json",
    )
    shown = ready_cli("budget", "show", "--json").json()
    history = ready_cli("budget", "history", "--org", org, "--model-type", "tax_rules", "--json").json()

    # Assert
    assert set_result.code == 0, set_result.err
    # Without --unit the cap is set in every unit of privacy, each its own ledger (sorted by unit).
    name = shown[0]["organization"]
    assert name.startswith("firm-")
    assert shown == [
        {
            "organization": name,
            "organization_id": org,
            "model_type": "tax_rules",
            "unit": unit,
            "epsilon_cap": 3.0,
            "delta": 1e-6,
            "epsilon_spent": 0.0,
            "epsilon_remaining": 3.0,
            "events": 0,
            "last_round": None,
            "status": "ok",
        }
        for unit in ("record", "tenant", "user")
    ]
    assert history == []
    assert "│ ok" in ready_cli("budget", "show", "--org", org).out


def test_budget_history_lists_charged_events_with_epsilon_after_each(
    ready_cli: Runner, database_url: str
) -> None:
    # Prepare: two charges through the Python API the server uses.
    from privacy import ledger
    from privacy.events import DpSgdEvent
    from schema.db import make_engine, transaction

    org = make_org(ready_cli)
    engine = make_engine(database_url)
    try:
        with transaction(engine) as session:
            policy = ledger.LedgerPolicy()
            for round_ in (1, 2):
                ledger.charge(
                    session, org, "m", DpSgdEvent(1.0, 0.01, 100), aggregation_round=round_, policy=policy
                )
    finally:
        engine.dispose()

    # Execute
    history = ready_cli("budget", "history", "--org", org, "--model-type", "m", "--json").json()
    shown = ready_cli("budget", "show", "--org", org, "--json").json()

    # Assert
    assert [h["aggregation_round"] for h in history] == [1, 2]
    assert history[1]["epsilon_after"] == pytest.approx(accounting.mechanism_epsilon(1.0, 0.01, 200, 1e-5))
    assert history[0]["epsilon_after"] < history[1]["epsilon_after"]
    assert shown[0]["epsilon_spent"] == history[1]["epsilon_after"]
    assert (shown[0]["events"], shown[0]["last_round"], shown[0]["epsilon_cap"]) == (2, 2, 8.0)


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("--org", "ORG", "--model-type", "m", "--epsilon", "0", "--delta", "1e-5"), 2, "epsilon cap"),
        (("--org", "ORG", "--model-type", "m", "--epsilon", "-2", "--delta", "1e-5"), 2, "epsilon cap"),
        (("--org", "ORG", "--model-type", "m", "--epsilon", "1", "--delta", "1.5"), 2, "delta"),
        (("--org", "ORG", "--model-type", "m", "--epsilon", "1", "--delta", "0"), 2, "delta"),
        (("--org", "ORG", "--model-type", " ", "--epsilon", "1", "--delta", "1e-5"), 2, "model type"),
        (
            ("--org", "not-a-uuid", "--model-type", "m", "--epsilon", "1", "--delta", "1e-5"),
            3,
            "no organization is named",
        ),
        (
            ("--org", str(uuid.UUID(int=7)), "--model-type", "m", "--epsilon", "1", "--delta", "1e-5"),
            3,
            "does not exist",
        ),
        (("--org", "ORG", "--model-type", "m", "--epsilon", "1"), 2, "--delta"),
    ],
)
def test_bad_budget_input_is_one_line_and_writes_nothing(
    ready_cli: Runner, args: tuple[str, ...], code: int, fragment: str
) -> None:
    # Prepare
    org = make_org(ready_cli)
    audit_before = ready_cli("audit", "verify", "--json").json()

    # Execute
    result = ready_cli("budget", "set", *(org if a == "ORG" else a for a in args))

    # Assert
    assert result.code == code
    assert one_line_error(result), result.err
    assert fragment in result.err
    assert ready_cli("budget", "show", "--json").json() == []
    assert ready_cli("audit", "verify", "--json").json() == audit_before


def test_budget_commands_name_an_unknown_organization(ready_cli: Runner) -> None:
    unknown = str(uuid.uuid4())
    for args in (
        ("budget", "show", "--org", unknown),
        ("budget", "history", "--org", unknown, "--model-type", "m"),
    ):
        result = ready_cli(*args)
        assert result.code == 3
        assert one_line_error(result) and unknown in result.err


def test_budget_commands_refuse_an_unmigrated_database(cli: Runner) -> None:
    result = cli("budget", "show", "--json")
    assert result.code == 5
    assert one_line_error(result) and "accute-fl db upgrade" in result.err


def test_budget_show_prints_the_ledgers_epsilon_to_the_last_bit(
    ready_cli: Runner, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`budget show` reads budgets with Core; its table and JSON are what the ORM's rows and an
    accountant's replay of each ledger's events give, byte for byte: a replayed curve (stored one
    missing), a non-private release (+inf, "inf" in JSON), several tenants, units and model types."""
    # Prepare: charges through the ledger, then one budget's stored curve dropped (replayed on read).
    from sqlalchemy import select, update

    from orchestrator.cli.output import emit_json, emit_table
    from orchestrator.cli.privacy_commands import BUDGET_COLUMNS
    from privacy import ledger
    from privacy.events import CentralDpEvent, DpSgdEvent, NonPrivateEvent, event_from_row
    from schema.db import make_engine, transaction
    from schema.models import Organization, PrivacyBudget, PrivacyLedgerEvent

    first, second = make_org(ready_cli), make_org(ready_cli)
    policy = ledger.LedgerPolicy()
    engine = make_engine(database_url)
    try:
        with transaction(engine) as session:
            ledger.set_budget(session, second, "digits", 1.9, 1e-6, policy=policy, unit="user")
            for round_ in (1, 2, 3):
                ledger.charge(
                    session,
                    first,
                    "digits",
                    DpSgdEvent(1.1, 0.01, 50),
                    aggregation_round=round_,
                    policy=policy,
                )
            ledger.charge(session, first, "digits", CentralDpEvent(2.0, 0.2, 5, 1.0), policy=policy)
            ledger.charge(session, first, "vision", DpSgdEvent(1.0, 0.02, 200, "user"), policy=policy)
            ledger.charge(session, second, "digits", DpSgdEvent(1.2, 0.02, 150, "user"), policy=policy)
            ledger.charge(session, second, "vision", NonPrivateEvent("record"), policy=policy)
            session.execute(
                update(PrivacyBudget)
                .where(
                    PrivacyBudget.organization_id == uuid.UUID(first), PrivacyBudget.model_type == "vision"
                )
                .values(rdp_curve=None, rdp_orders_key=None)
            )
        with transaction(engine) as session:  # expected: ORM rows, epsilon replayed from the events
            names = {str(o.id): o.name for o in session.scalars(select(Organization))}
            expected = []
            budgets = session.scalars(
                select(PrivacyBudget).order_by(
                    PrivacyBudget.organization_id, PrivacyBudget.model_type, PrivacyBudget.unit
                )
            )
            for budget in budgets:
                events = [
                    event_from_row(
                        e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, e.clip_norm, e.unit
                    )
                    for e in session.scalars(
                        select(PrivacyLedgerEvent)
                        .where(
                            PrivacyLedgerEvent.organization_id == budget.organization_id,
                            PrivacyLedgerEvent.model_type == budget.model_type,
                            PrivacyLedgerEvent.unit == budget.unit,
                        )
                        .order_by(PrivacyLedgerEvent.id)
                    )
                ]
                cap = budget.epsilon_cap or policy.default_epsilon_cap
                delta = budget.delta or policy.default_delta
                spent = accounting.epsilon(events, delta)
                expected.append(
                    {
                        "organization": names[str(budget.organization_id)],
                        "organization_id": str(budget.organization_id),
                        "model_type": budget.model_type,
                        "unit": budget.unit,
                        "epsilon_cap": cap,
                        "delta": delta,
                        "epsilon_spent": spent,
                        "epsilon_remaining": max(0.0, cap - spent),
                        "events": len(events),
                        "last_round": budget.last_round,
                        "status": ledger.status_of(spent, cap),
                    }
                )
    finally:
        engine.dispose()
    capsys.readouterr()
    emit_json(
        [{k: ledger.finite_or_inf(v) if isinstance(v, float) else v for k, v in r.items()} for r in expected]
    )
    emit_table(
        "Privacy budgets",
        [{k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()} for r in expected],
        BUDGET_COLUMNS,
    )
    expected_json, expected_table = capsys.readouterr().out.split("\n]\n")

    # Execute
    shown_json = ready_cli("budget", "show", "--json")
    shown_table = ready_cli("budget", "show")
    one_org = ready_cli("budget", "show", "--org", second, "--json")

    # Assert
    assert shown_json.code == 0 and shown_table.code == 0, shown_json.err + shown_table.err
    assert shown_json.out == expected_json + "\n]\n"
    assert shown_table.out == expected_table
    statuses = {(r["organization_id"], r["model_type"], r["unit"]): r for r in shown_json.json()}
    assert statuses[(second, "vision", "record")]["epsilon_spent"] == "inf"
    assert statuses[(second, "vision", "record")]["status"] == "exhausted"
    assert statuses[(first, "vision", "user")]["events"] == 1  # its curve was replayed
    assert 0 < statuses[(first, "vision", "user")]["epsilon_spent"] < 8
    assert statuses[(second, "digits", "user")]["status"] == "near_cap"
    assert one_org.json() == [r for r in shown_json.json() if r["organization_id"] == second]
