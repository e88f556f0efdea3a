"""What erasure's compaction costs, beside the erasure it follows, on SQLite and PostgreSQL.

A tenant of ``--users`` users (each with three consents carrying an IP address and user agent, and
their consent events) is written in bulk; then, ``--repeats`` times, one user is erased through
``dsr.process_request`` (the baseline: what an erasure cost before compaction) and the touched
tables are compacted (``erasure.compact``: SQLite VACUUM of the whole file, PostgreSQL VACUUM FULL
of the tables the stores name). Prints medians in ms and the ratio compaction / erasure.

On SQLite it also measures the alternative, ``PRAGMA secure_delete``: the same erasure with it ON
against OFF (the ratio is what every write would pay if all connections turned it on).

    .venv/bin/python bench/erasure_compaction.py [--users 20000] [--repeats 5] [--postgres URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from consent_gate import dsr, erasure  # noqa: E402
from schema import directory, migrate  # noqa: E402
from schema.bulk import insert_rows  # noqa: E402
from schema.db import make_engine, transaction  # noqa: E402
from schema.models import ConsentEvent, User, UserConsent  # noqa: E402
from schema.timeutil import utcnow  # noqa: E402

CONSENTS = ("ai_training", "federated_learning", "vamn_contribution")
ORIGIN = ("203.0.113.7", "Mozilla/5.0 (X11; Linux x86_64) BenchBrowser/1.0")
KEYS = ("id", "organization_id", "user_id", "consent_type")
VERSIONED = ("consent_version", "ip_address", "user_agent")


def _table(model: Any) -> sa.Table:
    return cast(sa.Table, model.__table__)


def populate(engine: Engine, users: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    now = utcnow()
    with transaction(engine) as session:
        org = directory.create_organization(session, "Bench Erasure").id
        ids = [uuid.uuid4() for _ in range(users)]
        insert_rows(
            session,
            _table(User),
            ("id", "organization_id", "email"),
            [(u, org, f"person{n}@bench-erasure.example.com") for n, u in enumerate(ids)],
        )
        consents = [(uuid.uuid4(), org, u, t, True, "1.0", *ORIGIN, now) for u in ids for t in CONSENTS]
        insert_rows(session, _table(UserConsent), (*KEYS, "consent_given", *VERSIONED, "given_at"), consents)
        events = [(uuid.uuid4(), org, u, t, "granted", "1.0", *ORIGIN, now) for u in ids for t in CONSENTS]
        insert_rows(session, _table(ConsentEvent), (*KEYS, "action", *VERSIONED, "occurred_at"), events)
    return org, ids


def erase_one(engine: Engine, org: uuid.UUID, user: uuid.UUID, secure_delete: bool | None = None) -> float:
    with transaction(engine) as session:
        request = dsr.file_request(session, org, user, "erasure", {"why": "bench"})
    start = time.perf_counter()
    with transaction(engine) as session:
        if secure_delete is not None:
            session.connection().exec_driver_sql(f"PRAGMA secure_delete={'ON' if secure_delete else 'OFF'}")
        dsr.process_request(session, request.id)
    return time.perf_counter() - start


def timed_compact(engine: Engine) -> float:
    start = time.perf_counter()
    result = erasure.compact(engine)
    elapsed = time.perf_counter() - start
    if result["status"] != "vacuumed":
        print(f"  (compaction incomplete: {result.get('reason')})")
    return elapsed


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def bench(engine: Engine, label: str, users: int, repeats: int) -> dict[str, Any]:
    migrate.upgrade(engine)
    org, ids = populate(engine, users)
    erasures, compactions = [], []
    for n in range(repeats):
        erasures.append(erase_one(engine, org, ids[n]))
        compactions.append(timed_compact(engine))
    row: dict[str, Any] = {
        "backend": label,
        "erasure_ms": ms(erasures),
        "compaction_ms": ms(compactions),
        "ratio": ms(compactions) / ms(erasures),
    }
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database or "")
        row["file_mb"] = path.stat().st_size / 1e6
        off, on = [], []
        for n in range(repeats):  # interleaved, each on a fresh user
            off.append(erase_one(engine, org, ids[repeats + 2 * n], secure_delete=False))
            on.append(erase_one(engine, org, ids[repeats + 2 * n + 1], secure_delete=True))
        row["secure_delete_off_ms"], row["secure_delete_on_ms"] = ms(off), ms(on)
        row["secure_delete_ratio"] = ms(on) / ms(off)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default=None, help="A PostgreSQL URL (a fresh schema is made in it).")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/bench.db")
        rows.append(bench(engine, "sqlite", args.users, args.repeats))
        engine.dispose()
    if args.postgres:
        schema_name = f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema_name}"')
        url = sa.make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema_name}"})
        engine = make_engine(url.render_as_string(hide_password=False))
        try:
            rows.append(bench(engine, "postgresql", args.users, args.repeats))
        finally:
            engine.dispose()
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{schema_name}" CASCADE')
    for row in rows:
        print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
