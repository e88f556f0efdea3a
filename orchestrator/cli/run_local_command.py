"""`accute-fl run-local`: a real SuperLink and N SuperNodes on loopback, one governed run, report.json."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from fl_server.config import DpMode
from fl_server.deploy import run_local as deploy_run_local
from schema.errors import InvalidInputError


def run_local(
    task: str = typer.Option(
        ..., "--task", help="Model type: digits, time_estimation, document_templates, …"
    ),
    nodes: int = typer.Option(..., "--nodes", help="SuperNodes to start, one tenant each."),
    rounds: int = typer.Option(..., "--rounds", help="Federated rounds."),
    dp: DpMode = typer.Option(
        DpMode.LOCAL, "--dp", help="Differential privacy: off, local, central or both."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the synthetic tenant data (and of the run when > 0)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folder for report.json, logs, the SQLite database, weights."
    ),
    run_name: str | None = typer.Option(
        None, "--run-name", help="Run name; the same name resumes a stopped run at its next round."
    ),
    round_timeout_s: float = typer.Option(
        600.0, "--round-timeout", help="Seconds to wait for a round's replies."
    ),
    timeout_s: float = typer.Option(1800.0, "--timeout", help="Seconds to wait for the whole run."),
    secure: bool = typer.Option(
        False,
        "--secure",
        help="TLS (a throwaway CA in OUT/credentials) and SuperNode authentication, as across machines.",
    ),
) -> None:
    """Run a governed federation on real Flower processes on this machine and write report.json."""
    if nodes < 1 or nodes > 64:
        raise InvalidInputError("--nodes must be between 1 and 64")
    if rounds < 1:
        raise InvalidInputError("--rounds must be at least 1")
    if run_name is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", run_name):
        raise InvalidInputError("--run-name may use letters, digits, '.', '_' and '-' (at most 100)")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} exists and is not a folder")
    report = deploy_run_local(
        out,
        task=task,
        nodes=nodes,
        rounds=rounds,
        dp=dp,
        seed=seed,
        run_name=run_name,
        timeout_s=timeout_s,
        extra={"round_timeout_s": round_timeout_s},
        secure=secure,
    )
    typer.echo(f"report: {report}")
    typer.echo(f"logs:   {report.parent / 'logs'}")
