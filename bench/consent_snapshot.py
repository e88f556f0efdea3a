"""Consent snapshot on PostgreSQL: one organization with 100,000 users and all ten consent types.

Loads (COPY) a fresh schema: the measured organization with N users, each with a row for every one
of the ten consent types (about 90 % granted per type, so about 73 % hold the three that `digits`
needs), 1 % of the users under an open erasure/restriction/objection request, and a second
organization of N/10 users as noise. Then it times, each in its own transaction:

- compute: `compute_snapshot` (the SQL GROUP BY over `idx_consents_granted` + digest in Python);
- take: `take_snapshot` of a population that changed (one withdrawal before each run), i.e.
  compute + storing the snapshot with every member (COPY) + its audit record;
- recheck: `recheck` on arrival (recompute and compare the digest).

It prints the medians and the EXPLAIN (ANALYZE, BUFFERS) plan of the snapshot query, and exits 1
when the compute median is 1 s or more or the plan does not use the index. The schema is dropped
at the end unless --keep.

    .venv/bin/python bench/consent_snapshot.py [--users 100000] [--repeats 7] [--url URL]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from consent_gate import compute_snapshot, recheck, records, take_snapshot  # noqa: E402
from consent_gate.bulk import insert_rows  # noqa: E402
from consent_gate.gate import consenting_users_query  # noqa: E402
from consent_gate.policy import ConsentPolicy  # noqa: E402
from schema import migrate  # noqa: E402
from schema.db import make_engine, transaction  # noqa: E402
from schema.models import DataSubjectRequest, Organization, User, UserConsent  # noqa: E402
from schema.timeutil import utcnow  # noqa: E402
from schema.vocab import CONSENT_TYPES  # noqa: E402

DEFAULT_URL = os.environ.get(
    "ACCUTE_BENCH_POSTGRES_URL",
    os.environ.get("ACCUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)
MODEL_TYPE = "digits"
GRANT_RATE = 0.9
RESTRICTED_RATE = 0.01


def load(engine: Engine, users: int, seed: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Bulk-load the organizations, users, consents and requests; returns the measured org and its users."""
    rng = random.Random(seed)
    org_id, noise_id = uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    populations = {
        org_id: [uuid.uuid4() for _ in range(users)],
        noise_id: [uuid.uuid4() for _ in range(users // 10)],
    }
    with transaction(engine) as session:
        insert_rows(
            session,
            Organization.__table__,  # type: ignore[arg-type]
            ("id", "name", "billing_model"),
            [(org_id, "bench-org", "pay_as_you_go"), (noise_id, "bench-noise", "pay_as_you_go")],
        )
        insert_rows(
            session,
            User.__table__,  # type: ignore[arg-type]
            ("id", "organization_id", "email"),
            ((u, org, f"{u.hex}@bench.example.com") for org, ids in populations.items() for u in ids),
        )

        def consents() -> Iterator[tuple[Any, ...]]:
            for org, ids in populations.items():
                for user in ids:
                    for consent_type in CONSENT_TYPES:
                        given = rng.random() < GRANT_RATE
                        yield (
                            uuid.uuid4(),
                            org,
                            user,
                            consent_type,
                            given,
                            "1.0",
                            "192.0.2.1",
                            "bench",
                            now,
                            None if given else now,
                        )

        insert_rows(
            session,
            UserConsent.__table__,  # type: ignore[arg-type]
            (
                "id",
                "organization_id",
                "user_id",
                "consent_type",
                "consent_given",
                "consent_version",
                "ip_address",
                "user_agent",
                "given_at",
                "withdrawn_at",
            ),
            consents(),
        )
        restricted = rng.sample(populations[org_id], int(users * RESTRICTED_RATE))
        insert_rows(
            session,
            DataSubjectRequest.__table__,  # type: ignore[arg-type]
            ("id", "organization_id", "user_id", "request_type", "status", "request_details", "deadline"),
            (
                (
                    uuid.uuid4(),
                    org_id,
                    u,
                    rng.choice(("erasure", "restriction", "objection")),
                    "pending",
                    "{}",
                    now,
                )
                for u in restricted
            ),
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    return org_id, populations[org_id]


def existing(engine: Engine) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with engine.connect() as connection:
        org_id = connection.execute(
            sa.select(Organization.id).where(Organization.name == "bench-org")
        ).scalar_one()
        users = connection.execute(sa.select(User.id).where(User.organization_id == org_id)).scalars().all()
    return org_id, list(users)


def timed(repeats: int, run: Callable[[], Any], before: Callable[[int], None] | None = None) -> list[float]:
    seconds = []
    for i in range(repeats):
        if before is not None:
            before(i)
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def explain(engine: Engine, org_id: uuid.UUID) -> str:
    required = ConsentPolicy.default().required_consents(MODEL_TYPE)
    sql = consenting_users_query(org_id, required).compile(
        dialect=engine.dialect, compile_kwargs={"literal_binds": True, "render_postcompile": True}
    )
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").all()
    return "\n".join(row[0] for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="PostgreSQL server (a fresh schema is created in it)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schema")
    parser.add_argument("--schema", help="reuse a schema kept by an earlier --keep run (skips loading)")
    args = parser.parse_args()

    schema_name = args.schema or f"bench_consent_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.url)
    if not args.schema:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema_name}"')
    url = sa.make_url(args.url).update_query_dict({"options": f"-csearch_path={schema_name}"})
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        migrate.upgrade(engine)
        start = time.perf_counter()
        if args.schema:
            org_id, users = existing(engine)
        else:
            org_id, users = load(engine, args.users, args.seed)
        load_s = time.perf_counter() - start
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("CHECKPOINT")  # let the load's writes settle before timing
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("SELECT count(*) FROM user_consents").scalar()
            version = connection.exec_driver_sql("SHOW server_version").scalar()
        print(
            f"PostgreSQL {version}; {rows:,} consent rows, {len(users):,} users in the measured organization "
            f"(+{rows // len(CONSENT_TYPES) - len(users):,} in another); "
            + (
                "reused schema " + schema_name
                if args.schema
                else f"loaded in {load_s:.1f} s (COPY + VACUUM ANALYZE)"
            )
        )

        def compute() -> Any:
            with transaction(engine) as session:
                return compute_snapshot(session, org_id, MODEL_TYPE)

        snapshot = compute()  # warm-up
        gc.collect()
        compute_s = timed(args.repeats, compute)

        def withdraw_one(i: int) -> None:
            with transaction(engine) as session:
                records.withdraw(session, org_id, snapshot.user_ids[i], "ai_training")

        def take() -> Any:
            with transaction(engine) as session:
                return take_snapshot(session, org_id, MODEL_TYPE)

        take_s = timed(args.repeats, take, withdraw_one)
        latest = take()

        def check() -> None:
            with transaction(engine) as session:
                assert recheck(session, org_id, MODEL_TYPE, latest.digest)

        recheck_s = timed(args.repeats, check)
        plan = explain(engine, org_id)

        print(
            f"snapshot: {len(snapshot.user_ids):,} of {len(users):,} users consent to {MODEL_TYPE} "
            f"(required: {', '.join(snapshot.required_consents)}); digest {snapshot.digest[:16]}…"
        )
        for name, values in (
            ("compute_snapshot", compute_s),
            ("take_snapshot (changed, stored)", take_s),
            ("recheck", recheck_s),
        ):
            print(
                f"{name:32} median {statistics.median(values) * 1000:7.1f} ms   "
                f"min {min(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms   (n={len(values)})"
            )
        print("\nEXPLAIN (ANALYZE, BUFFERS) of the snapshot query:\n" + plan)
        ok = statistics.median(compute_s) < 1.0 and "idx_consents_granted" in plan
        print("\nresult:", "PASS (< 1 s, index used)" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        engine.dispose()
        if not args.keep and not args.schema:
            with admin.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{schema_name}" CASCADE')
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
