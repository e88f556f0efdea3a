"""Check-and-charge latency of the privacy ledger for a tenant that already has 10,000 events.

Seeds a fresh database (SQLite file by default; PostgreSQL with --postgres) with one tenant whose
ledger holds N events charged through ``privacy.ledger.charge`` (a few training configurations,
as rounds would produce), then times, each in its own committed transaction:

- charge (warm): ``charge`` of one more event with a configuration already seen (its per-step RDP
  curve cached in the process, as in a running server), including the commit;
- charge (cold): the same with a configuration never seen (the per-step RDP computed first);
- replay: what a ledger without its stored curve would pay per check: read all N events and
  recompute epsilon from them (warm: per-step curves cached; cold: computed).

It prints the medians (wall with and without the commit, and this process's CPU time) and the
replay / charge ratios, and exits 1 if the SQLite check+charge median (seen configuration, commit
included) is 5 ms or more. Wall times move with the machine's load (other jobs' CPU and fsyncs):
the load average is printed before and after. Optionally (--noise) it also times secure Gaussian noise on a 10M-parameter float32 update.

    .venv/bin/python bench/privacy_charge.py [--events 10000] [--repeats 300] [--postgres [URL]] [--noise]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from privacy import accounting, ledger, secure_noise  # noqa: E402
from privacy.events import DpSgdEvent  # noqa: E402
from schema import directory, migrate  # noqa: E402
from schema.db import make_engine, transaction  # noqa: E402

MODEL = "workflow_patterns"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Four training configurations, as a tenant's rounds would repeat them.
CONFIGS = [(5.0, 0.01, 10), (6.0, 0.02, 5), (8.0, 0.01, 20), (5.5, 0.005, 10)]


def median_ms(
    run: Callable[[], object], repeats: int, before: Callable[[], object] | None = None
) -> tuple[float, float]:
    """Median wall and CPU (this process) milliseconds of ``run``."""
    wall, cpu = [], []
    for _ in range(repeats):
        if before is not None:
            before()
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def seed(engine: Engine, events: int, policy: ledger.LedgerPolicy) -> uuid.UUID:
    with transaction(engine) as session:
        org = directory.create_organization(session, f"bench-{uuid.uuid4().hex[:8]}").id
        ledger.set_budget(session, org, MODEL, 1000.0, 1e-5, policy=policy)
    batch = 500
    for start in range(0, events, batch):
        with transaction(engine) as session:
            for i in range(start, min(start + batch, events)):
                z, q, steps = CONFIGS[i % len(CONFIGS)]
                ledger.charge(
                    session, org, MODEL, DpSgdEvent(z, q, steps), aggregation_round=i, policy=policy
                )
    return org


def bench(engine: Engine, label: str, events: int, repeats: int) -> float:
    policy = ledger.LedgerPolicy()
    migrate.upgrade(engine)
    t0 = time.perf_counter()
    org = seed(engine, events, policy)
    print(f"[{label}] seeded {events} events through charge() in {time.perf_counter() - t0:.1f} s")
    round_ = [events]

    def charge(event: DpSgdEvent) -> tuple[float, float, float]:
        """Wall with commit, wall without, CPU with commit (seconds)."""
        start, start_cpu = time.perf_counter(), time.process_time()
        with transaction(engine) as session:
            ledger.charge(session, org, MODEL, event, aggregation_round=round_[0], policy=policy)
            charged = time.perf_counter()
        round_[0] += 1
        return time.perf_counter() - start, charged - start, time.process_time() - start_cpu

    # Seen and new configurations alternate, so both meet the same load.
    seen_times, new_times = [], []
    for z_new in np.linspace(20.0, 40.0, repeats):
        seen_times.append(charge(DpSgdEvent(*CONFIGS[0])))
        new_times.append(charge(DpSgdEvent(float(z_new), 0.01, 10)))
    warm, warm_inside, warm_cpu = (statistics.median(t[i] for t in seen_times) * 1000 for i in range(3))
    cold, cold_inside, cold_cpu = (statistics.median(t[i] for t in new_times) * 1000 for i in range(3))

    def replay() -> float:
        with transaction(engine) as session:
            return accounting.epsilon_from_rdp(ledger.replay_curve(session, org, MODEL), 1e-5)

    replay_repeats = max(5, repeats // 20)
    replay_warm, replay_warm_cpu = median_ms(replay, replay_repeats)
    replay_cold, replay_cold_cpu = median_ms(replay, replay_repeats, before=accounting.step_rdp.cache_clear)

    with transaction(engine) as session:
        total = len(ledger.history(session, org, MODEL, policy=policy))
        spent = ledger.spent(session, org, MODEL, policy=policy)
    assert spent == replay(), "stored curve and replay disagree"
    print(f"[{label}] ledger: {events} seeded + {total - events} charged while timing, epsilon {spent:.4f}")
    print(f"[{label}]   stored curve == replay of all {total} events: yes")
    print(f"[{label}] median ms              wall (commit incl.)  wall (no commit)  CPU of this process")
    print(f"[{label}] check+charge, seen cfg  {warm:10.2f}  {warm_inside:16.2f}  {warm_cpu:18.2f}")
    print(f"[{label}] check+charge, new cfg   {cold:10.2f}  {cold_inside:16.2f}  {cold_cpu:18.2f}")
    print(f"[{label}] full replay, warm cache {replay_warm:10.2f}  {'':16}  {replay_warm_cpu:18.2f}")
    print(f"[{label}] full replay, cold cache {replay_cold:10.2f}  {'':16}  {replay_cold_cpu:18.2f}")
    print(
        f"[{label}] replay / charge (seen cfg): wall {replay_warm / warm:.0f}x (cold cache {replay_cold / warm:.0f}x),"
        f" CPU {replay_warm_cpu / warm_cpu:.0f}x (cold cache {replay_cold_cpu / warm_cpu:.0f}x)"
    )
    return warm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument(
        "--postgres", nargs="?", const=os.environ.get("ACCUTE_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--noise", action="store_true", help="also time secure noise on 10M parameters")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )

    sqlite_median = 0.0
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/bench.db")
        try:
            sqlite_median = bench(engine, "sqlite", args.events, args.repeats)
        finally:
            engine.dispose()
    if args.postgres:
        schema_name = f"bench_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(args.postgres)
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema_name}"')
        url = sa.make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema_name}"})
        engine = make_engine(url.render_as_string(hide_password=False))
        try:
            bench(engine, "postgresql", args.events, args.repeats)
        finally:
            engine.dispose()
            with admin.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{schema_name}" CASCADE')
            admin.dispose()

    if args.noise:
        update = np.zeros(10_000_000, dtype=np.float32)
        noise, noise_cpu = median_ms(lambda: secure_noise.add_gaussian_noise(update, 1.0), 5)
        print(
            f"secure Gaussian noise on 10M float32 parameters: median {noise:.0f} ms wall, {noise_cpu:.0f} ms CPU"
        )

    print(f"load average after the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if sqlite_median >= 5.0:
        print(f"FAIL: SQLite check+charge median {sqlite_median:.2f} ms (commit included) is not under 5 ms")
        return 1
    print(f"OK: SQLite check+charge median {sqlite_median:.2f} ms (commit included) is under 5 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
