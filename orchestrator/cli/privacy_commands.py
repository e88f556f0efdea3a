"""`accute-fl privacy ...` (DP math) and `accute-fl budget ...` (tenants' privacy budgets)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import typer

from orchestrator.cli.context import load_settings, organization_id, ready_engine
from orchestrator.cli.lazy import LazyCommand, lazy_group
from orchestrator.cli.output import emit
from privacy.accountants import check_accountant
from schema.db import reading, transaction
from schema.errors import InvalidInputError

if TYPE_CHECKING:
    from privacy import budget_status

# `privacy audit` lives in its own module, imported only when it runs (its mechanisms and
# statistics pull scipy, and torch for DP-SGD).
PRIVACY_LAZY = {
    "audit": LazyCommand(
        "orchestrator.cli.privacy_audit_command",
        "audit",
        "Empirical privacy audit: a 95 % lower bound on epsilon for our own mechanism, against its claim.",
    )
}
privacy_app = typer.Typer(
    help="Differential privacy math: epsilon and noise.", no_args_is_help=True, cls=lazy_group(PRIVACY_LAZY)
)
budget_app = typer.Typer(help="Privacy budgets of tenants: caps, spending, history.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")
ACCOUNTANT_OPTION = typer.Option(
    None, "--accountant", help="rdp or prv (default: ACCUTE_ACCOUNTANT, rdp unless set)."
)
SAMPLE_RATE_OPTION = typer.Option(..., "--sample-rate", help="Poisson sampling rate q in (0, 1].")
STEPS_OPTION = typer.Option(..., "--steps", help="Number of steps (or rounds) T >= 0.")
DELTA_OPTION = typer.Option(..., "--delta", help="Target delta in (0, 1).")
ORG_OPTION = typer.Option(..., "--org", help="Organization id or name.", callback=organization_id)
MODEL_TYPE_OPTION = typer.Option(..., "--model-type", help="Model type (task) the budget is for.")

BUDGET_COLUMNS = (
    "organization",
    "organization_id",
    "model_type",
    "unit",
    "epsilon_cap",
    "delta",
    "epsilon_spent",
    "epsilon_remaining",
    "events",
    "last_round",
    "status",
)
HISTORY_COLUMNS = (
    "id",
    "run",
    "mechanism",
    "unit",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "aggregation_round",
    "epsilon_after",
    "created_at",
)


def _accountant(name: str | None) -> str:
    return check_accountant(name if name is not None else load_settings().accountant)


def _policy() -> budget_status.LedgerPolicy:
    from privacy import budget_status  # Core reads and the accountant: only budget commands need them

    return budget_status.LedgerPolicy.from_settings(load_settings())


def _readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Floats to 4 significant digits for the table; JSON keeps full precision."""
    return [{k: f"{v:.4g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A non-private release's epsilon (+inf) as the string "inf": JSON has no infinity."""
    from privacy.budget_status import finite_or_inf

    return [{k: finite_or_inf(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _show(
    payload: dict[str, Any] | list[dict[str, Any]], as_json: bool, title: str, columns: tuple[str, ...]
) -> None:
    if as_json:
        emit(
            _json_safe(payload) if isinstance(payload, list) else _json_safe([payload])[0],
            True,
            title,
            columns,
        )
    else:
        emit(_readable(payload if isinstance(payload, list) else [payload]), False, title, columns)


@privacy_app.command("epsilon")
def epsilon(
    noise_multiplier: float = typer.Option(..., "--noise-multiplier", help="Noise multiplier z > 0."),
    sample_rate: float = SAMPLE_RATE_OPTION,
    steps: int = STEPS_OPTION,
    delta: float = DELTA_OPTION,
    accountant: str | None = ACCOUNTANT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Epsilon of T steps of the Poisson-subsampled Gaussian (DP-SGD) at delta."""
    from privacy import accounting  # numpy: only the commands that compute

    name = _accountant(accountant)
    eps = accounting.mechanism_epsilon(noise_multiplier, sample_rate, steps, delta, name)
    if not math.isfinite(eps):
        raise InvalidInputError("epsilon is unbounded for these values; use a larger noise multiplier")
    _show(
        {"epsilon": eps, "delta": delta, "accountant": name},
        as_json,
        "Epsilon",
        ("epsilon", "delta", "accountant"),
    )


@privacy_app.command("noise")
def noise(
    target_epsilon: float = typer.Option(..., "--target-epsilon", help="Epsilon to meet, > 0."),
    sample_rate: float = SAMPLE_RATE_OPTION,
    steps: int = STEPS_OPTION,
    delta: float = DELTA_OPTION,
    accountant: str | None = ACCOUNTANT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The smallest noise multiplier whose epsilon after T steps is at most the target."""
    from privacy import accounting

    name = _accountant(accountant)
    z = accounting.noise_multiplier_for(target_epsilon, sample_rate, steps, delta, name)
    record = {
        "noise_multiplier": z,
        "epsilon": accounting.mechanism_epsilon(z, sample_rate, steps, delta, name),
        "target_epsilon": target_epsilon,
        "sample_rate": sample_rate,
        "steps": steps,
        "delta": delta,
        "accountant": name,
    }
    _show(record, as_json, "Noise multiplier", tuple(record))


@budget_app.command("set")
def budget_set(
    org: str = ORG_OPTION,
    model_type: str = MODEL_TYPE_OPTION,
    epsilon_cap: float = typer.Option(..., "--epsilon", help="Epsilon cap > 0."),
    delta: float = DELTA_OPTION,
    unit: str | None = typer.Option(
        None, "--unit", help="record, user or tenant (default: every unit, each its own epsilon)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Set the privacy budget cap (epsilon, delta) of a tenant for a model type, per unit of privacy."""
    from privacy import ledger

    policy = _policy()
    with transaction(ready_engine()) as session:
        statuses = ledger.set_budget(session, org, model_type, epsilon_cap, delta, policy=policy, unit=unit)
    _show([s.as_dict() for s in statuses], as_json, "Privacy budget set", BUDGET_COLUMNS)


@budget_app.command("show")
def budget_show(
    org: str | None = typer.Option(
        None, "--org", help="Only this organization (id or name).", callback=organization_id
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Every budget with epsilon spent and remaining; status ok, near_cap (>= 80 %) or exhausted."""
    # The ledger's own reads (``budget_rows``: epsilon from the accountant), with Core on a
    # connection: no ORM, no mapped class.
    from privacy import budget_status
    from schema import listings

    policy = _policy()
    with reading(ready_engine()) as connection:
        rows = [s.as_dict() for s in budget_status.budget_rows(connection, org, policy=policy)]
        names = listings.organization_names(connection, {str(r["organization_id"]) for r in rows})
    rows = [{"organization": names.get(str(r["organization_id"])), **r} for r in rows]
    _show(rows, as_json, "Privacy budgets", BUDGET_COLUMNS)


@budget_app.command("history")
def budget_history(
    org: str = ORG_OPTION, model_type: str = MODEL_TYPE_OPTION, as_json: bool = JSON_OPTION
) -> None:
    """A tenant's DP events for a model type, in order, with epsilon after each."""
    from privacy import budget_views, ledger

    policy = _policy()
    from fl_server.event_runs import runs_of_events

    with transaction(ready_engine()) as session:
        entries = ledger.history(session, org, model_type, policy=policy)  # an unknown org: exit 3
        if not entries:
            budget_views.check_model_type(session, model_type)
        runs = runs_of_events(session, model_type, entries)
        name = budget_views.organization_names(session, {org}).get(org)
    rows = [{"organization": name, "run": runs.get(e.id), **e.as_dict()} for e in entries]
    _show(rows, as_json, f"Privacy ledger of {name} for {model_type}", HISTORY_COLUMNS)
