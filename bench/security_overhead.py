"""Benchmark: the chat route's added overhead with every security layer on, against off, in one run.

Two services as ``accute-fl serve`` runs them, on one database and one provider (the setup and the
load client of ``bench/cascade_overhead.py``, imported, not copied):

- on: ``ACCUTE_ZERO_TRUST_ENABLED=true``: per-address and per-organization rate limits (in Redis
  when ``--redis`` names one, shared by every worker; in process memory otherwise), the threat index
  with ``--indicators`` active indicators loaded (addresses, ranges, domains, agents; the client's
  address is not listed), the anomaly/behaviour/device context, the zero-trust decision, and every
  decision written to ``zero_trust_access_log`` in batches;
- off: ``ACCUTE_ZERO_TRUST_ENABLED=false`` and ``ACCUTE_ANOMALY_DETECTION=false`` (token and role
  checks only, as before); "on" runs the anomaly detectors too.

At concurrency 1, in ``--rounds`` interleaved blocks of ``--block`` requests (off, on, off, on, ...)
so that load from other processes on the machine falls on both alike. Reported per side: p50/p99 of
the client latency and of the service's own ``x-accute-overhead-ms``; and on - off. Then the
access-log rows written (every request of the "on" side must have one).

    .venv/bin/python bench/security_overhead.py [--rounds 6] [--block 300] [--warmup 300]
        [--indicators 100000] [--redis redis://127.0.0.1:6379/12]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa
from cascade_overhead import (  # type: ignore[import-not-found]
    Bench,
    Run,
    _free_port,
    _measure,
    _pct,
    _request_bytes,
    _run_provider,
    _run_service,
    _tree,
    _uptime_load,
    _wait,
)


def _indicator_rows(count: int) -> list[dict[str, Any]]:
    """``count`` active indicators: 70% addresses, 10% ranges (none covers loopback), 15% domains, 5% agents."""
    rng = random.Random(7)
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()  # (type, value, source) is unique in the table (migration 0019)
    i = -1
    while len(rows) < count:
        i += 1
        kind = i % 20
        if kind < 14:
            value, itype = (
                f"{rng.randint(11, 126)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                "ip",
            )
        elif kind < 16:
            value, itype = f"{rng.randint(128, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24", "ip"
        elif kind < 19:
            value, itype = f"h{i}.bad{rng.randint(0, 10**6)}.example", "domain"
        else:
            value, itype = f"BadAgent/{i}", "user_agent"
        if (itype, value) in seen:
            continue
        seen.add((itype, value))
        rows.append(
            {
                "id": uuid.uuid4(),
                "indicator_type": itype,
                "indicator_value": value,
                "threat_type": "bench",
                "severity": "high",
                "source": "bench",
                "confidence": 90,
                "first_seen": now,
                "last_seen": now,
                "is_active": True,
            }
        )
    return rows


def _side(run: Run) -> dict[str, float]:
    return {
        "latency_p50_ms": round(_pct(run.latencies_ms, 50), 3),
        "latency_p99_ms": round(_pct(run.latencies_ms, 99), 3),
        "overhead_header_p50_ms": round(_pct(run.overhead_ms, 50), 3),
        "overhead_header_p99_ms": round(_pct(run.overhead_ms, 99), 3),
        "service_cpu_ms_per_request": round(run.cpu_s * 1000 / max(len(run.latencies_ms), 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved off/on blocks")
    parser.add_argument("--block", type=int, default=300, help="requests per block")
    parser.add_argument("--warmup", type=int, default=300, help="requests per side before measuring")
    parser.add_argument("--indicators", type=int, default=100_000, help="active threat indicators loaded")
    parser.add_argument("--redis", default=None, help="Redis URL for the 'on' side's rate limits")
    args = parser.parse_args()

    from schema.models import ThreatIntelligence

    bench = Bench.create()
    provider_port, on_port, off_port = _free_port(), _free_port(), _free_port()
    prefix = f"accute-bench-{uuid.uuid4().hex[:8]}"
    on_env = bench.env | {
        "ACCUTE_ZERO_TRUST_ENABLED": "true",
        "ACCUTE_ANOMALY_DETECTION": "true",
        "ACCUTE_RATE_LIMIT_KEY_PREFIX": prefix,
    }
    if args.redis:
        on_env["ACCUTE_REDIS_URL"] = args.redis
    off_env = bench.env | {"ACCUTE_ZERO_TRUST_ENABLED": "false", "ACCUTE_ANOMALY_DETECTION": "false"}
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_run_provider, args=(provider_port,), daemon=True),
        context.Process(target=_run_service, args=(on_port, on_env, 1)),
        context.Process(target=_run_service, args=(off_port, off_env, 1)),
    ]
    try:
        engine, org, token = bench.tenant(provider_port)
        rows = _indicator_rows(args.indicators)
        with engine.begin() as connection:
            for start in range(0, len(rows), 10_000):
                connection.execute(sa.insert(ThreatIntelligence), rows[start : start + 10_000])
        for process in processes:
            process.start()
        _wait(provider_port, "/")
        _wait(on_port, "/healthz")
        _wait(off_port, "/healthz")
        pids = {"on": _tree(processes[1].pid or 0), "off": _tree(processes[2].pid or 0)}
        request = {
            side: _request_bytes(
                port,
                f"/v1/orgs/{org}/agents/luca/chat",
                {"message": "What is the VAT rate?"},
                {"authorization": f"Bearer {token}", "user-agent": "bench-client/1.0"},
            )
            for side, port in (("on", on_port), ("off", off_port))
        }
        ports = {"on": on_port, "off": off_port}
        for side in ("off", "on"):
            _measure(ports[side], request[side], args.warmup, 1, pids[side])
        load_before = _uptime_load()
        totals = {"on": Run(), "off": Run()}
        for _ in range(args.rounds):
            for side in ("off", "on"):
                run = _measure(ports[side], request[side], args.block, 1, pids[side])
                totals[side].latencies_ms += run.latencies_ms
                totals[side].overhead_ms += run.overhead_ms
                totals[side].cpu_s += run.cpu_s
        load_after = _uptime_load()
        time.sleep(2.5)  # the access log's last batch (flushed every second)
        with engine.connect() as connection:
            logged = connection.execute(sa.text("SELECT count(*) FROM zero_trust_access_log")).scalar_one()
        on, off = _side(totals["on"]), _side(totals["off"])
        result = {
            "rounds": args.rounds,
            "block": args.block,
            "indicators": args.indicators,
            "rate_limits": "redis" if args.redis else "in-process",
            "load_average_before": load_before,
            "load_average_after": load_after,
            "off": off,
            "on": on,
            "added_latency_p50_ms": round(on["latency_p50_ms"] - off["latency_p50_ms"], 3),
            "added_overhead_header_p50_ms": round(
                on["overhead_header_p50_ms"] - off["overhead_header_p50_ms"], 3
            ),
            "added_cpu_ms_per_request": round(
                on["service_cpu_ms_per_request"] - off["service_cpu_ms_per_request"], 3
            ),
            "on_requests": args.warmup + args.rounds * args.block,
            "access_log_rows": logged,
        }
        print(json.dumps(result, indent=2))
        engine.dispose()
        if logged != result["on_requests"]:
            raise SystemExit(
                f"{result['on_requests']} requests on the 'on' side but {logged} access-log rows"
            )
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        if args.redis:
            import redis

            client = redis.Redis.from_url(args.redis)
            for key in client.scan_iter(f"{prefix}*"):
                client.delete(key)
        bench.drop()


if __name__ == "__main__":
    main()
