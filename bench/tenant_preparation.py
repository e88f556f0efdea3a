"""Preparing a simulation's tenants: wall time and peak RSS for N tenants, SQLite and PostgreSQL.

Each measurement is a fresh process on a fresh database migrated to head (a temporary SQLite
file, or a new schema on the PostgreSQL server), calling ``simulations.federation.prepare_federation``
as ``accute-fl simulate`` does (digits, a cap for every tenant, every user consenting). It prints
the seconds, the process's peak RSS before preparing (imports: torch, Flower) and after, the rows
written, and the time of `audit verify` over the whole database afterwards (which must pass).

``--tree PATH`` runs the same with ``PYTHONPATH=PATH`` (e.g. ``--tree /work/main`` for the
row-by-row preparation before bulk), so before/after are measured by one command.

    .venv/bin/python bench/tenant_preparation.py [--tenants 1000,10000] [--backends sqlite,postgresql]
        [--tree PATH] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from sqlalchemy import func, select
url, tenants, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
from schema import audit, migrate
from schema.db import make_engine, transaction
from schema.models import ImmutableAuditLog, Organization, User, UserConsent
from simulations.federation import prepare_federation
engine = make_engine(url)
migrate.upgrade(engine)
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
prepare_federation(engine, task="digits", tenants=tenants, seed=7, manifest_path=folder / "manifest.json",
                   epsilon_caps={i: 8.0 for i in range(tenants)}, name_prefix="bench-")
seconds = time.perf_counter() - started
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with transaction(engine) as session:
    rows = {m.__tablename__: int(session.scalar(select(func.count()).select_from(m)))
            for m in (Organization, User, UserConsent, ImmutableAuditLog)}
    verify_started = time.perf_counter()
    reports = audit.verify(session)
    verify_s = time.perf_counter() - verify_started
print(json.dumps({"seconds": seconds, "rss_before_mb": rss_before / 1024, "rss_peak_mb": rss_after / 1024,
                  "rows": rows, "chains": len(reports), "chains_ok": all(r.ok for r in reports),
                  "verify_s": verify_s}))
"""


def fresh_database(backend: str, folder: Path, postgres: str) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{folder / 'bench.db'}", None
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    admin.dispose()
    url = sa.make_url(postgres).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def drop(schema: str | None, postgres: str) -> None:
    if schema is None:
        return
    admin = sa.create_engine(postgres)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.dispose()


def run_scale_child(
    child: str, backend: str, tenants: int, tail: list[object], postgres: str = DEFAULT_POSTGRES
) -> dict[str, object] | None:
    """Run ``child`` (Python source) in a fresh process on a fresh database; its last JSON line.

    argv of the child: the database URL, ``tenants``, then ``tail``; the last element of ``tail`` is
    replaced by a temporary folder the child may write to. ``None`` (and stderr printed) on failure.
    """
    with tempfile.TemporaryDirectory() as folder:
        url, schema = fresh_database(backend, Path(folder), postgres)
        argv = [url, tenants, *tail[:-1], folder]
        try:
            done = subprocess.run(
                [sys.executable, "-c", child, *map(str, argv)],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            drop(schema, postgres)
    if done.returncode != 0:
        print(f"{backend} {tenants}: failed\n{done.stderr[-3000:]}", flush=True)
        return None
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({"backend": backend, **result, "load": round(os.getloadavg()[0], 1)}), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", default="1000,10000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--tree", default=str(ROOT))
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    args = parser.parse_args()
    tree = str(Path(args.tree).resolve())
    env = {**os.environ, "PYTHONPATH": tree}
    print(f"tree {tree}, load {os.getloadavg()[0]:.1f}")
    failed = False
    for backend in args.backends.split(","):
        for tenants in (int(n) for n in args.tenants.split(",")):
            with tempfile.TemporaryDirectory() as folder:
                url, schema = fresh_database(backend, Path(folder), args.postgres)
                try:
                    done = subprocess.run(
                        [sys.executable, "-c", CHILD, url, str(tenants), folder],
                        env=env,
                        cwd=tree,  # `python -c` puts the working directory first on sys.path
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                finally:
                    drop(schema, args.postgres)
            if done.returncode != 0:
                print(f"{backend} {tenants}: failed\n{done.stderr[-3000:]}")
                failed = True
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            failed |= not result["chains_ok"]
            print(
                json.dumps(
                    {"backend": backend, "tenants": tenants, **result, "load": round(os.getloadavg()[0], 1)}
                )
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
