"""Governor time per round, in process, for one or more source trees run side by side.

``bench/governance_overhead.py`` measures the whole round in Flower's simulation engine (Ray);
on a shared machine its rounds swing by 2-4x, far more than the governor's share. This bench
isolates that share: for each ``--tree`` in turn (``PYTHONPATH=TREE``, a fresh process and a fresh
database each), it prepares ``--tenants`` digits tenants, runs ``GovernedStrategy.start`` for
``--rounds`` rounds on the in-process grid double (``tests/fl_server/grid_double.LocalGrid``: the
real ClientApp, no transport), with timers and a statement counter (SQLAlchemy
``before_cursor_execute``) around the ``Governor`` methods a round calls. It prints, per tree, the
median over rounds 2..R (round 1 binds the nodes) of each method's wall and CPU milliseconds (CPU
is what load does not inflate; wall includes the commits' fsyncs) and statements per round, and the median over the ``--repeats`` processes; trees alternate so load hits both alike.

    .venv/bin/python bench/governor_rounds.py --tree /tmp/base --tree . [--tenants 4] [--rounds 6]
        [--repeats 3] [--postgres [URL]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
METHODS = ("admit", "dispatch", "judge", "commit_round", "record_metric", "mark_offline")

CHILD = r"""
import json, logging, sys, tempfile, time, uuid
from pathlib import Path
import sqlalchemy as sa
from sqlalchemy import event

from aggregation.flwr_adapter import record_from_arrays
from aggregation.weights_store import WeightsStore
from fl_client.app import make_client_app
from fl_client.tasks import get_task
from fl_server import governance
from fl_server.app import inner_strategy
from fl_server.config import RunConfig
from fl_server.strategy import GovernedStrategy
from schema import migrate
from schema.config import Settings
from schema.db import make_engine
from simulations.federation import prepare_federation
from tests.fl_server.grid_double import LocalGrid

logging.disable(logging.WARNING)
tenants, rounds, postgres, methods = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
work = Path(tempfile.mkdtemp(prefix="governor_rounds_"))
admin = None
if postgres:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres)
    with admin.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    url = sa.make_url(postgres).update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(
        hide_password=False
    )
else:
    url = f"sqlite:///{work / 'bench.db'}"
engine = make_engine(url)
try:
    migrate.upgrade(engine)
    manifest = work / "manifest.json"
    prepare_federation(engine, task="digits", tenants=tenants, seed=5, manifest_path=manifest)
    nodes = json.loads(manifest.read_text())["tenants"]
    grid = LocalGrid(make_client_app(), {1000 + i: node for i, node in enumerate(nodes)})
    config = RunConfig(run_name="bench-run", task="digits", rounds=rounds, dp="local", noise_multiplier=1.1,
                       clip_norm=1.0, sample_rate=0.1, steps=20, lr=0.5, seed=3, round_timeout_s=60.0,
                       min_nodes=tenants, max_update_norm=1000.0)
    current = {"round": 0}
    ms = {m: {} for m in methods}
    cpu = {m: {} for m in methods}
    stmts = {m: {} for m in methods}
    active = []
    event.listen(engine, "before_cursor_execute",
                 lambda *a: [stmts[m].__setitem__(current["round"], stmts[m].get(current["round"], 0) + 1)
                             for m in active[-1:]])

    def timed(name, fn):
        def wrapper(self, server_round, *args, **kwargs):
            current["round"] = server_round
            active.append(name)
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                return fn(self, server_round, *args, **kwargs)
            finally:
                active.pop()
                ms[name][server_round] = ms[name].get(server_round, 0.0) + (time.perf_counter() - start) * 1000
                cpu[name][server_round] = cpu[name].get(server_round, 0.0) + (time.process_time() - start_cpu) * 1000
        return wrapper

    for m in methods:
        setattr(governance.Governor, m, timed(m, getattr(governance.Governor, m)))
    governor = governance.Governor(engine, config, Settings(default_epsilon_cap=1000.0))
    strategy = GovernedStrategy(inner_strategy(config), governor, WeightsStore(work / "weights"))
    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(3).items()}
    start = time.perf_counter()
    strategy.start(grid, record_from_arrays(initial))
    total = time.perf_counter() - start
    out = {"total_s": total}
    for m in methods:
        out[m] = {"ms": [ms[m].get(r, 0.0) for r in range(2, rounds + 1)],
                  "cpu": [cpu[m].get(r, 0.0) for r in range(2, rounds + 1)],
                  "statements": [stmts[m].get(r, 0) for r in range(2, rounds + 1)]}
    print(json.dumps(out))
finally:
    engine.dispose()
    if admin is not None:
        with admin.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="PYTHONPATH of a tree (repeatable).")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("ACCUTE_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
        default="",
    )
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.tree]
    runs: dict[str, list[dict[str, object]]] = {t: [] for t in trees}
    print(
        f"backend {'postgresql' if args.postgres else 'sqlite'}; load average before: {os.getloadavg()[0]:.2f}"
    )
    for _ in range(args.repeats):
        for tree in trees:
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(args.tenants),
                    str(args.rounds),
                    args.postgres,
                    ",".join(METHODS),
                ],
                env={**os.environ, "PYTHONPATH": tree},
                cwd=tree,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            runs[tree].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"per round, rounds 2..{args.rounds}, {args.tenants} tenants: median over rounds, then over repeats"
    )
    header = "".join(f"{m:>16}" for m in (*METHODS, "governor"))
    print(f"{'tree':<28}{header}")
    for tree, results in runs.items():
        cells = []
        for kind in ("ms", "cpu", "statements"):
            per_method = []
            for m in METHODS:
                per_method.append(statistics.median(statistics.median(r[m][kind]) for r in results))  # type: ignore[index]
            per_method.append(
                statistics.median(
                    statistics.median(
                        sum(r[m][kind][i] for m in METHODS)  # type: ignore[index]
                        for i in range(args.rounds - 1)
                    )
                    for r in results
                )
            )
            cells.append(per_method)
        print(f"{Path(tree).name[-27:]:<28}" + "".join(f"{v:>13.1f} ms" for v in cells[0]))
        print(f"{'':<28}" + "".join(f"{v:>9.1f} cpu ms" for v in cells[1]))
        print(f"{'':<28}" + "".join(f"{v:>12.0f} stmt" for v in cells[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
