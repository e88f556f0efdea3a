"""Benchmark: threat-intelligence matching per request against 1,000,000 active indicators.

Builds the in-memory index (``orchestrator.security.threat_index.ThreatIndex``) from generated
indicators in the table's mix: 60% IPv4 addresses, 10% IPv4 CIDR ranges (/16 to /28), 2% IPv6
ranges, 18% domains, 5% user agents, 5% SHA-256 hashes. Then, per request, what the security
gate does: the client address against addresses and ranges, and the user agent (one hit in ten
addresses is listed, one in a hundred in a listed range). Reported: the median and p99 of the
per-request time (each request timed alone with ``perf_counter_ns``, so the timer's own cost is
included), the mean over all requests, and the provider-endpoint check (URL prefixes, domain
suffix walk) that config creation runs. Also the build time and the index's memory.

    .venv/bin/python bench/threat_match.py [--indicators 1000000] [--requests 200000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _indicators(count: int, rng: random.Random) -> tuple[list[tuple[str, str, str]], list[str], list[str]]:
    rows: list[tuple[str, str, str]] = []
    listed: list[str] = []
    ranged: list[str] = []
    for i in range(count):
        kind = i % 100
        if kind < 60:
            address = (
                f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            )
            rows.append(("ip", address, "high"))
            listed.append(address)
        elif kind < 70:
            prefix = rng.randint(16, 28)
            base = rng.getrandbits(32) & (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
            text = ".".join(str((base >> s) & 255) for s in (24, 16, 8, 0))
            rows.append(("ip", f"{text}/{prefix}", "medium"))
            ranged.append(".".join(str(((base | 1) >> s) & 255) for s in (24, 16, 8, 0)))
        elif kind < 72:
            rows.append(("ip", f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::/64", "high"))
        elif kind < 90:
            rows.append(("domain", f"h{i}.bad{rng.getrandbits(20)}.example", "high"))
        elif kind < 95:
            rows.append(("user_agent", f"BadAgent/{i}", "medium"))
        else:
            rows.append(("hash", f"{rng.getrandbits(256):064x}", "critical"))
    return rows, listed, ranged


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--indicators", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()

    from orchestrator.security.threat_index import ThreatIndex

    rng = random.Random(14)
    rows, listed, ranged = _indicators(args.indicators, rng)
    tracemalloc.start()
    started = time.perf_counter()
    index = ThreatIndex(rows)
    build_s = time.perf_counter() - started
    memory_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del rows

    addresses = []
    for i in range(args.requests):
        if i % 10 == 0:
            addresses.append(rng.choice(listed))
        elif i % 100 == 1 and ranged:
            addresses.append(rng.choice(ranged))
        else:
            addresses.append(
                f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            )
    agents = ["Mozilla/5.0 (X11; Linux x86_64)", "python-httpx/0.27", "BadAgent/95"]
    match_ip, match_agent = index.match_ip, index.match_agent
    clock = time.perf_counter_ns
    per_request: list[int] = []
    hits = 0
    total_started = clock()
    for i, address in enumerate(addresses):
        agent = agents[i % 3]
        t0 = clock()
        found = match_ip(address) or match_agent(agent)
        per_request.append(clock() - t0)
        hits += found is not None
    total_ns = clock() - total_started
    endpoints = [f"https://api{i}.provider.example/v1/chat" for i in range(10_000)]
    endpoint_ns: list[int] = []
    for url in endpoints:
        t0 = clock()
        index.match_url(url)
        endpoint_ns.append(clock() - t0)

    with open("/proc/loadavg") as handle:
        load = " ".join(handle.read().split()[:3])
    print(
        json.dumps(
            {
                "indicators": index.size,
                "exact_addresses": len(index.ips),
                "merged_v4_ranges": len(index.v4),
                "build_s": round(build_s, 2),
                "index_structures_mb_excluding_strings": round(memory_mb, 1),
                "requests": args.requests,
                "matched": hits,
                "per_request_median_us": round(statistics.median(per_request) / 1000, 3),
                "per_request_p99_us": round(statistics.quantiles(per_request, n=100)[98] / 1000, 3),
                "per_request_mean_us_incl_loop": round(total_ns / args.requests / 1000, 3),
                "endpoint_check_median_us": round(statistics.median(endpoint_ns) / 1000, 3),
                "target_us": 10,
                "load_average": load,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
