"""`accute-fl run-local`: a real SuperLink and N SuperNodes on loopback, one governed run, a report.

Before any process starts, the run config is validated (exit 2) and the run name is checked
against the database the run will use: a completed run of that name is a conflict (exit 4, pick
another ``--run-name``); an unfinished one is resumed at its next round. While the run goes, a
thread reads the database and prints a line per completed round, with this run's ε and the
lifetime ε labelled apart (``fl_server.round_epsilon``). At the end the report folder holds the
same files as ``simulate``: report.json, tenants.csv, metric.png, epsilon.png and report.md; a
run that accepted no contribution exits 9 (as ``simulate``), its report.md saying why."""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import typer
from sqlalchemy import Engine, func, select

from fl_server.config import DpMode
from fl_server.round_epsilon import round_epsilon
from privacy.ledger import LedgerPolicy
from schema.config import Settings
from schema.db import make_engine, transaction
from schema.errors import ConflictError, InvalidInputError, NothingTrainedError
from schema.models import FlRoundOutcome, FlRoundSummary, FlRun, Organization, User


def default_run_name(task: str, nodes: int, rounds: int, seed: int) -> str:
    """The name ``fl_server.deploy.run_local`` gives a run without ``--run-name``."""
    return f"local-{task}-{nodes}n-{rounds}r-s{seed}"


def database_url(out: Path) -> str:
    """The database the deployment will use (``fl_server.deploy.LocalDeployment``'s rule)."""
    return os.environ.get("ACCUTE_DATABASE_URL") or f"sqlite:///{out.resolve() / 'accute.db'}"


def check_run_name(url: str, name: str) -> None:
    """Refuse (exit 4) a name a completed run already has; an unfinished run of the name resumes.

    A database that does not exist yet (or has no schema yet) has no runs: nothing to check.
    """
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return
    engine = make_engine(Settings(database_url=url))
    try:
        from sqlalchemy import inspect

        if not inspect(engine).has_table(FlRun.__tablename__):
            return
        with transaction(engine) as session:
            status = session.scalar(select(FlRun.status).where(FlRun.name == name))
    finally:
        engine.dispose()
    if status == "completed":
        raise ConflictError(
            f"run '{name}' already completed in this database; pick another name with --run-name"
        )


class RoundPrinter:
    """Polls the database and prints one line per completed round of the run (a daemon thread)."""

    def __init__(self, url: str, run_name: str, rounds: int, interval_s: float = 2.0) -> None:
        self.url, self.run_name, self.rounds, self.interval_s = url, run_name, rounds, interval_s
        self.policy = LedgerPolicy.from_settings(Settings(database_url=url))
        self.printed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RoundPrinter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        engine: Engine | None = None
        stopping = False
        while not stopping:
            # One last read after the stop: the final rounds committed since the previous poll.
            stopping = self.stop.wait(self.interval_s)
            try:
                engine = engine or make_engine(Settings(database_url=self.url))
                for line in self.new_lines(engine):
                    typer.echo(line)
            except Exception:
                continue
        if engine is not None:
            engine.dispose()

    def new_lines(self, engine: Engine) -> list[str]:
        """Lines for the rounds completed since the last call."""
        lines: list[str] = []
        with transaction(engine) as session:
            run = session.scalar(select(FlRun).where(FlRun.name == self.run_name))
            if run is None:
                return lines
            for number in range(self.printed + 1, run.last_completed_round + 1):
                summary = session.scalar(
                    select(FlRoundSummary).where(
                        FlRoundSummary.run_id == run.id, FlRoundSummary.aggregation_round == number
                    )
                )
                skipped = session.scalar(
                    select(func.count())
                    .select_from(FlRoundOutcome)
                    .where(
                        FlRoundOutcome.run_id == run.id,
                        FlRoundOutcome.aggregation_round == number,
                        FlRoundOutcome.sampled.is_(False),
                    )
                )
                metric = (
                    "-" if summary is None or summary.metric_value is None else f"{summary.metric_value:.4f}"
                )
                accepted = summary.accepted if summary is not None else 0
                epsilon = round_epsilon(session, self.run_name, number, self.policy)
                lines.append(
                    f"round {number}/{self.rounds}: {accepted} accepted, {skipped or 0} skipped, metric {metric}, "
                    + (epsilon.label() if epsilon is not None else "ε run - life -")
                )
                self.printed = number
        return lines


def write_outputs(report_path: Path, url: str) -> Path:
    """report.md, tenants.csv and the plots beside report.json (as ``simulate`` writes them)."""
    from fl_client.tasks import get_task
    from simulations.outputs import write_report

    report: dict[str, Any] = json.loads(report_path.read_text())
    engine = make_engine(Settings(database_url=url))
    try:
        with transaction(engine) as session:
            users: dict[str, tuple[int, int]] = {}
            for name, tenant in report["tenants"].items():
                org = uuid.UUID(tenant["organization_id"])
                if session.get(Organization, org) is not None:
                    count = session.scalar(
                        select(func.count()).select_from(User).where(User.organization_id == org)
                    )
                    users[name] = (int(count or 0), -1)
    finally:
        engine.dispose()
    metric = get_task(report["config"]["task"]).metric.name
    return write_report(report_path.parent, report, users, [], metric)


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
        None,
        "--run-name",
        help="Run name (default local-TASK-Nn-Rr-sSEED); an unfinished run of the name resumes, "
        "a completed one is refused (exit 4).",
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
    """Run a governed federation on real Flower processes on this machine and write its report."""
    if nodes < 1 or nodes > 64:
        raise InvalidInputError("--nodes must be between 1 and 64")
    if rounds < 1:
        raise InvalidInputError("--rounds must be at least 1")
    if run_name is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", run_name):
        raise InvalidInputError("--run-name may use letters, digits, '.', '_' and '-' (at most 100)")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} exists and is not a folder")
    name = run_name or default_run_name(task, nodes, rounds, seed)
    from fl_server.deploy import run_local as deploy_run_local
    from fl_server.deploy import run_overrides

    # The whole run config first (exit 2, one line naming key, value and range), then the name:
    # both before any folder, database or process exists.
    run_overrides(name, task, rounds, dp, seed, nodes, round_timeout_s=round_timeout_s)
    url = database_url(out)
    check_run_name(url, name)

    typer.echo(
        f"run-local {name}: starting a SuperLink and {nodes} SuperNode(s) on 127.0.0.1 "
        f"(logs in {out / 'logs'}); a line per completed round follows"
    )
    with RoundPrinter(url, name, rounds):
        report = deploy_run_local(
            out,
            task=task,
            nodes=nodes,
            rounds=rounds,
            dp=dp,
            seed=seed,
            run_name=name,
            timeout_s=timeout_s,
            extra={"round_timeout_s": round_timeout_s},
            secure=secure,
        )
    nothing = mark_nothing_trained(report)
    markdown = write_outputs(report, url).parent / "report.md"
    if nothing is not None:  # as `simulate`: exit 9, report.md says it in words
        raise NothingTrainedError(f"the run trained nothing: {nothing}; report: {markdown}")
    typer.echo(f"report: {report}")
    typer.echo(f"        {markdown}")
    typer.echo(f"logs:   {report.parent / 'logs'}")


def mark_nothing_trained(report_path: Path) -> str | None:
    """Why the run trained no one (None when someone was accepted), written into report.json as
    ``nothing_trained`` so report.md says it."""
    from simulations.runner import nothing_trained_reason

    report: dict[str, Any] = json.loads(report_path.read_text())
    nothing = nothing_trained_reason(report)
    if nothing is not None:
        report["nothing_trained"] = nothing
        report_path.write_text(json.dumps(report, indent=2, default=str))
    return nothing
