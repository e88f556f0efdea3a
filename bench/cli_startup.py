"""Start-up cost of small `accute-fl` commands against ``python -c "import sqlalchemy, typer"``.

Each command runs as a fresh process, as a user or a script runs it: ``python -c "from
orchestrator.cli.main import entrypoint; entrypoint()" ARGS`` (what the ``accute-fl`` console
script does). The database is a temporary SQLite file migrated to head with one organization,
two users, consents, a privacy budget with ledger events and a data subject request, prepared
in this process before timing.

Runs are interleaved (one of each command per repetition, in order) so that load changes hit
every command alike; the table gives medians of wall time and child CPU time and the ratio of
each command's median wall to the baseline's. ``--tree PATH`` (repeatable) times the same
commands with ``PYTHONPATH=PATH``, e.g. ``--tree /work/main --tree .`` for before/after in one
run. Exits 1 if ``--target`` is given and a command of the last tree exceeds it.

Every process reads compiled bytecode, as an installed console script does: the children write
and read their ``.pyc`` files under a cache folder of the run (``PYTHONPYCACHEPREFIX``; the trees
stay clean), even where ``PYTHONDONTWRITEBYTECODE`` is set, which would otherwise make every
process compile the trees' modules from source again (~15 ms a command). ``--no-pyc`` keeps that
behaviour, to compare with runs made before 2026-11-30 (session 9).

    .venv/bin/python bench/cli_startup.py [--repeats 9] [--tree PATH ...] [--target 1.5] [--floor] [--no-pyc]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASELINE = "import sqlalchemy, typer"
#: What the required stack costs before any command runs: the one pydantic-settings class is on the
#: path of every command that reads ``ACCUTE_DATABASE_URL``. Not commands: ``--target`` ignores them.
FLOORS = {
    "floor: +pydantic-settings": f"{BASELINE}, pydantic_settings",
    "floor: +Settings()": f"{BASELINE}, pydantic_settings; from schema.config import Settings; Settings()",
}
ENTRY = "from orchestrator.cli.main import entrypoint; entrypoint()"


def prepare(url: str) -> dict[str, str]:
    """A migrated database with a little of everything the timed commands read."""
    from consent_gate import dsr, records
    from privacy import ledger
    from privacy.events import DpSgdEvent
    from schema import directory, migrate
    from schema.db import make_engine, transaction

    engine = make_engine(url)
    migrate.upgrade(engine)
    policy = ledger.LedgerPolicy()
    with transaction(engine) as session:
        org = directory.create_organization(session, "Bench & Co", "pay_as_you_go")
        users = [directory.create_user(session, str(org.id), f"u{i}@bench.example") for i in range(2)]
    with transaction(engine) as session:
        for user in users:
            records.grant(session, str(org.id), str(user.id), "federated_learning", "v1")
        ledger.set_budget(session, str(org.id), "digits", 8.0, 1e-5, policy=policy)
        dsr.file_request(session, str(org.id), str(users[0].id), "access")
    with transaction(engine) as session:
        for round_ in range(1, 4):
            ledger.charge(
                session,
                str(org.id),
                "digits",
                DpSgdEvent(noise_multiplier=1.1, sample_rate=0.01, steps=50),
                aggregation_round=round_,
                policy=policy,
            )
    engine.dispose()
    return {"org": str(org.id)}


def commands(org: str) -> dict[str, list[str]]:
    return {
        "--help": ["--help"],
        "budget show --json": ["budget", "show", "--json"],
        "consent show": ["consent", "show", "--org", org],
        "dsr list": ["dsr", "list"],
        "org list": ["org", "list"],
    }


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and child CPU seconds of one process; a failing command stops the bench.

    The process runs in its tree (``python -c`` puts the working directory first on sys.path).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=env["PYTHONPATH"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[3:]) or argv[2]} failed ({done.returncode}): {done.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--tree", action="append", default=None, help="PYTHONPATH of a tree (repeatable).")
    parser.add_argument("--target", type=float, default=None, help="Fail above this ratio (last tree).")
    parser.add_argument("--floor", action="store_true", help="Also time the required stack's bare imports.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the medians here.")
    parser.add_argument(
        "--no-pyc", action="store_true", help="Compile the trees' modules from source in every process."
    )
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in (args.tree or [str(ROOT)])]

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/cli.db"
        org = prepare(url)["org"]
        cases: list[tuple[str, str, list[str], dict[str, str]]] = []
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": tree, "ACCUTE_DATABASE_URL": url}
            env.pop("ACCUTE_DEBUG", None)
            if args.no_pyc:
                env["PYTHONDONTWRITEBYTECODE"] = "1"
            else:
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                env["PYTHONPYCACHEPREFIX"] = f"{folder}/pycache"
            cases.append(("baseline", tree, [sys.executable, "-c", BASELINE], env))
            if args.floor:
                cases += [(label, tree, [sys.executable, "-c", code], env) for label, code in FLOORS.items()]
            for label, cli_args in commands(org).items():
                cases.append((label, tree, [sys.executable, "-c", ENTRY, *cli_args], env))
        for _, _, argv, env in cases:  # warm the page cache and the .pyc files once
            run_once(argv, env)
        walls: dict[tuple[str, str], list[float]] = {(label, tree): [] for label, tree, _, _ in cases}
        cpus: dict[tuple[str, str], list[float]] = {(label, tree): [] for label, tree, _, _ in cases}
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):
            for label, tree, argv, env in cases:
                wall, cpu = run_once(argv, env)
                walls[(label, tree)].append(wall)
                cpus[(label, tree)].append(cpu)
        load_after = os.getloadavg()[0]

    print(
        f"python {sys.version.split()[0]}, {args.repeats} interleaved repetitions, "
        f"load {load_before:.1f} -> {load_after:.1f}, {'no .pyc' if args.no_pyc else '.pyc cached'}"
    )
    results: list[dict[str, object]] = []
    worst = 0.0
    for tree in trees:
        print(f"\ntree {tree}")
        print(f"{'command':<22}{'wall ms':>10}{'cpu ms':>10}{'x baseline':>12}")
        base = statistics.median(walls[("baseline", tree)])
        for label, case_tree, _, _ in cases:
            if case_tree != tree:
                continue
            wall = statistics.median(walls[(label, tree)])
            cpu = statistics.median(cpus[(label, tree)])
            ratio = wall / base
            if label != "baseline" and label not in FLOORS and tree == trees[-1]:
                worst = max(worst, ratio)
            print(f"{label:<22}{wall * 1000:>10.0f}{cpu * 1000:>10.0f}{ratio:>12.2f}")
            results.append(
                {"tree": tree, "command": label, "wall_ms": wall * 1000, "cpu_ms": cpu * 1000, "ratio": ratio}
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.target is not None and worst > args.target:
        print(f"\nFAIL: the slowest command is {worst:.2f}x the baseline (target {args.target}x)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
