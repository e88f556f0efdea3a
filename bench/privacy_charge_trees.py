"""Check-and-charge on PostgreSQL for two source trees, interleaved, so both meet the same load.

``bench/privacy_charge.py`` times one tree; on a shared machine its wall times swing with other
jobs by 10x between runs, so a before/after comparison needs both in one run. Each round runs, for
each ``--tree`` in turn, a fresh process (``PYTHONPATH=TREE``) that migrates a new PostgreSQL
schema, seeds one tenant with ``--events`` events through ``charge()``, then times ``--charges``
committed charges of a configuration already seen (median wall and CPU of that process) and counts
the statements one charge sends (BEGIN, the pool's ping and COMMIT come on top, the same for all).

    .venv/bin/python bench/privacy_charge_trees.py --tree /tmp/base --tree . [--rounds 2] [--charges 150]
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

CHILD = r"""
import json, os, statistics, sys, time, uuid
import sqlalchemy as sa
from sqlalchemy import event
from privacy import ledger
from privacy.events import DpSgdEvent
from schema import directory, migrate
from schema.db import make_engine, transaction

base, events, charges = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
name = f"bench_{uuid.uuid4().hex[:12]}"
admin = sa.create_engine(base)
with admin.begin() as c:
    c.exec_driver_sql(f'CREATE SCHEMA "{name}"')
url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={name}"})
engine = make_engine(url.render_as_string(hide_password=False))
try:
    migrate.upgrade(engine)
    policy = ledger.LedgerPolicy()
    with transaction(engine) as s:
        org = directory.create_organization(s, "bench").id
        ledger.set_budget(s, org, "m", 1000.0, 1e-5, policy=policy)
    for start in range(0, events, 500):
        with transaction(engine) as s:
            for i in range(start, min(start + 500, events)):
                ledger.charge(s, org, "m", DpSgdEvent(5.0, 0.01, 10), aggregation_round=i, policy=policy)
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(1))
    walls, cpus, counts = [], [], []
    for i in range(charges):
        statements.clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        with transaction(engine) as s:
            ledger.charge(s, org, "m", DpSgdEvent(5.0, 0.01, 10), aggregation_round=events + i, policy=policy)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
        counts.append(len(statements))
    print(json.dumps({"wall_ms": statistics.median(walls) * 1000, "cpu_ms": statistics.median(cpus) * 1000,
                      "statements": statistics.median(counts)}))
finally:
    engine.dispose()
    with admin.begin() as c:
        c.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
    admin.dispose()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="PYTHONPATH of a tree (repeatable).")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--charges", type=int, default=150)
    parser.add_argument("--postgres", default=os.environ.get("ACCUTE_TEST_POSTGRES_URL", DEFAULT_POSTGRES))
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.tree]
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for _ in range(args.rounds):
        for tree in trees:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, args.postgres, str(args.events), str(args.charges)],
                env={**os.environ, "PYTHONPATH": tree},
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
            )
            results[tree].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'tree':<40}{'wall ms':>10}{'cpu ms':>10}{'statements':>12}   (median of rounds' medians)")
    for tree, runs in results.items():
        wall = statistics.median(r["wall_ms"] for r in runs)
        cpu = statistics.median(r["cpu_ms"] for r in runs)
        print(f"{tree:<40}{wall:>10.2f}{cpu:>10.2f}{runs[0]['statements']:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
