"""`accute-fl runs list|show`: federated runs, their rounds, participants and who sat out why."""

from __future__ import annotations

import typer

from orchestrator.cli.context import ready_engine
from orchestrator.cli.output import emit, emit_json, emit_table
from schema.db import transaction

app = typer.Typer(help="Federated training runs: status, rounds, participants, ε.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")
RUN_COLUMNS = ("name", "task", "status", "last_completed_round", "rounds", "tenants", "updated_at")
TENANT_COLUMNS = (
    "tenant",
    "organization",
    "rounds_sampled",
    "rounds_accepted",
    "epsilon_after",
    "not_accepted",
)


@app.command("list")
def runs_list(as_json: bool = JSON_OPTION) -> None:
    """Every run, newest first; a `running` run silent for twice its round timeout shows `abandoned`."""
    from fl_server.runs import list_runs

    with transaction(ready_engine()) as session:
        rows = [r.as_dict() for r in list_runs(session)]
    emit(rows, as_json, "Federated runs", RUN_COLUMNS)


@app.command("show")
def runs_show(
    name: str = typer.Argument(..., help="The run's name (see `accute-fl runs list`)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """One run: per round each tenant's status and reason, and per tenant its ε and sat-out rounds."""
    from fl_server.runs import run_detail

    with transaction(ready_engine()) as session:
        detail = run_detail(session, name)
    if as_json:
        emit_json(detail)
        return
    run = detail["run"]
    emit_table(f"Run {run['name']}", [run], RUN_COLUMNS)
    rounds = [
        {
            "round": r["round"],
            "metric": "-" if r.get("metric") is None else f"{r['metric']:.4g}",
            "accepted": r.get("accepted", "-"),
            "statuses": ", ".join(
                f"{tenant}: {t['status']}" + (f" ({t['reason']})" if t["reason"] else "")
                for tenant, t in sorted(r["tenants"].items())
            ),
        }
        for r in detail["rounds"]
    ]
    emit_table("Rounds", rounds, ("round", "metric", "accepted", "statuses"))
    tenants = [
        t
        | {
            "epsilon_after": "-" if t["epsilon_after"] is None else f"{t['epsilon_after']:.4g}",
            "not_accepted": "; ".join(f"round {k}: {v}" for k, v in sorted(t["not_accepted"].items())),
        }
        for t in detail["tenants"]
    ]
    emit_table("Tenants", tenants, TENANT_COLUMNS)
