"""Benchmark: latency the inference cascade adds over calling the same provider directly.

Three kinds of process on loopback, so that the measuring tools are not the bottleneck:

- a minimal OpenAI-compatible provider: a raw asyncio protocol on uvloop that answers every
  HTTP/1.1 request on a keep-alive connection with the same fixed chat completion;
- the cascade service, as ``accute-fl serve`` runs it (uvicorn, uvloop + httptools, ``--workers``
  processes of the app factory), usage logging on PostgreSQL, no response cache;
- this client: a raw asyncio HTTP/1.1 load generator on uvloop with one keep-alive connection per
  concurrent request (it writes a prebuilt request and reads the status line, the headers and a
  Content-Length body).

Both targets are measured side by side in one run, after a warm-up, the provider directly
(``POST /v1/chat/completions``) and through the cascade (``POST /v1/orgs/{org}/agents/luca/chat``,
one tenant config pointing at the provider):

- at concurrency 1: added latency without queueing;
- at ``--concurrency`` (closed loop: each connection sends its next request as soon as the answer
  to the previous one arrived): the saturation throughput, and p50/p99 that are mostly queueing
  (Little's law: latency ≈ concurrency / throughput);
- open loop at ``--rate`` requests/s (at most ``--concurrency`` in flight): p50/p99 at a given
  load below saturation, counted from each request's scheduled send time.
 It also reports the service's own per-request
overhead as LiteLLM measures it (the ``x-accute-overhead-ms`` response header: time in the service
minus the time waiting for the provider), the service's CPU time per request, and checks that every
cascade request wrote its ``llm_usage_log`` row.

    .venv/bin/python bench/cascade_overhead.py [--requests 5000] [--concurrency 50] [--workers 1]
        [--serial-requests 1000] [--rate 300] [--rate-requests 3000] [--warmup 500]
        [--stream-requests 300] [--request-ids] [--stream-only]

Streaming (``--stream-requests``, at concurrency 1): the provider answers ``"stream": true`` with
server-sent events, the first delta at once and the rest 5 ms later; the time to the first token
(the first chunk carrying text) directly and through ``POST /v1/chat/completions`` with
``stream: true`` (the door streams the provider's deltas through). ``--request-ids`` sends a fresh
``X-Request-Id`` with every cascade request: the idempotent path (stored-answer check and the
cross-process ``llm_inflight`` claim). ``--stream-only`` skips the non-streamed runs (after the
warm-up): the time to first token alone, e.g.
``--stream-only --warmup 200 --stream-requests 1000``.

PostgreSQL: ACCUTE_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test);
the run uses its own schema and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

POSTGRES_URL = os.environ.get("ACCUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REPLY_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
).encode()
REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(REPLY_BODY)}\r\n\r\n".encode()
    + REPLY_BODY
)
OVERHEAD_HEADER = b"x-accute-overhead-ms:"
_HAS_TEXT = re.compile(rb'"content": ?"[^"]')


def _sse_chunk(data: dict[str, Any] | str) -> bytes:
    event = b"data: " + (data.encode() if isinstance(data, str) else json.dumps(data).encode()) + b"\n\n"
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


STREAM_GAP_S = 0.005
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
STREAM_FIRST = _sse_chunk(
    {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Twenty"}}]}
)
STREAM_REST = (
    b"".join(
        _sse_chunk({"id": "c", "choices": [{"index": 0, "delta": {"content": w}}]}) for w in (" per", " cent")
    )
    + _sse_chunk({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    + _sse_chunk({"id": "c", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}})
    + _sse_chunk("[DONE]")
    + b"0\r\n\r\n"
)


# -- the provider: a raw asyncio HTTP/1.1 protocol ------------------------------------------------------
class _ProviderProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            streamed = b'"stream":true' in self.buffer[end + 4 : total].replace(b" ", b"")
            del self.buffer[:total]
            if not streamed:
                self.transport.write(REPLY)
                continue
            # A stream: the head and the first delta at once, the rest STREAM_GAP_S later (as a
            # model would), so the time to the first token is not the time to the whole answer.
            self.transport.write(STREAM_HEAD + STREAM_FIRST)
            asyncio.get_running_loop().call_later(STREAM_GAP_S, self.transport.write, STREAM_REST)


def _run_provider(port: int) -> None:
    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_ProviderProtocol, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    uvloop.run(serve())


def _run_service(port: int, env: dict[str, str], workers: int) -> None:
    os.environ.update(env)
    from orchestrator.cli.service_commands import run_server

    run_server("127.0.0.1", port, workers, log_level="error")


# -- the load client: raw asyncio streams, keep-alive ----------------------------------------------------
@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0


def _request_bytes(port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """Send one request; the response head (status line and headers, lowercased) after its body is read."""
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise SystemExit(f"a response without content-length: {head[:200]!r}")
    length = int(head[at + 17 : head.find(b"\r\n", at + 2)])
    body = await reader.readexactly(length)
    if not head.startswith(b"http/1.1 200"):
        status = head.split(b"\r\n", 1)[0]
        raise SystemExit(f"answered {status!r}: {body[:300]!r}")
    return head


async def _stream_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[float, float]:
    """Send one streaming request; (ms to the first chunk with text, ms to the end of the body)."""
    started = time.perf_counter()
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if not head.startswith(b"http/1.1 200") or b"chunked" not in head:
        raise SystemExit(f"not a chunked 200 stream: {head[:200]!r}")
    first = 0.0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return first, (time.perf_counter() - started) * 1000
        if not first and _HAS_TEXT.search(data):
            first = (time.perf_counter() - started) * 1000


async def _stream_load(port: int, request: bytes, total: int) -> tuple[list[float], list[float]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ttft, whole = [], []
    for _ in range(total):
        first, end = await _stream_exchange(reader, writer, request)
        ttft.append(first)
        whole.append(end)
    writer.close()
    return ttft, whole


def _overhead(head: bytes) -> float | None:
    at = head.find(OVERHEAD_HEADER)
    if at < 0:
        return None
    return float(head[at + len(OVERHEAD_HEADER) : head.find(b"\r\n", at)])


def _with_id(request: bytes) -> bytes:
    """``request`` with a fresh ``x-request-id`` header (the idempotent path: claim and stored-answer check)."""
    end = request.index(b"\r\n") + 2
    return request[:end] + b"x-request-id: " + uuid.uuid4().hex.encode() + b"\r\n" + request[end:]


REQUEST_IDS = False


async def _load(port: int, request: bytes, total: int, concurrency: int) -> Run:
    run = Run()
    remaining = [total]
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            head = await _exchange(reader, writer, _with_id(request) if REQUEST_IDS else request)
            run.latencies_ms.append((time.perf_counter() - started) * 1000)
            overhead = _overhead(head)
            if overhead is not None:
                run.overhead_ms.append(overhead)

    started = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in connections))
    run.elapsed_s = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return run


async def _open_loop(port: int, request: bytes, total: int, rate: float, max_in_flight: int) -> Run:
    """Requests sent on a fixed schedule (``rate`` per second) whatever the answers' pace.

    Latency counts from the scheduled send time, so waiting for a free connection (at most
    ``max_in_flight``) is included rather than hidden (no coordinated omission).
    """
    run = Run()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(max_in_flight):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))

    async def one(scheduled: float) -> None:
        reader, writer = await pool.get()
        head = await _exchange(reader, writer, _with_id(request) if REQUEST_IDS else request)
        run.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        overhead = _overhead(head)
        if overhead is not None:
            run.overhead_ms.append(overhead)
        pool.put_nowait((reader, writer))

    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    sent = 0
    while sent < total:
        now = time.perf_counter()
        while sent < total and started + sent / rate <= now:
            tasks.append(asyncio.ensure_future(one(started + sent / rate)))
            sent += 1
        if sent < total:
            await asyncio.sleep(max(started + sent / rate - time.perf_counter(), 0))
    await asyncio.gather(*tasks)
    run.elapsed_s = time.perf_counter() - started
    while not pool.empty():
        pool.get_nowait()[1].close()
    return run


def _measure(
    port: int, request: bytes, total: int, concurrency: int, pids: list[int], rate: float | None = None
) -> Run:
    import uvloop

    cpu_before = _cpu_seconds(pids)
    if rate is None:
        run = uvloop.run(_load(port, request, total, concurrency))
    else:
        run = uvloop.run(_open_loop(port, request, total, rate, concurrency))
    run.cpu_s = _cpu_seconds(pids) - cpu_before
    return run


# -- helpers ---------------------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    """The process and its descendants (uvicorn --workers forks its workers)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    stack.extend(int(p) for p in handle.read().split())
        except OSError:
            continue
    return found


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            continue
    return total / ticks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(port: int, path: str) -> None:
    deadline = time.monotonic() + 60
    request = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(request)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"127.0.0.1:{port}{path} did not come up")


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _summary(run: Run, requests: int) -> dict[str, float]:
    return {
        "p50_ms": round(_pct(run.latencies_ms, 50), 3),
        "p99_ms": round(_pct(run.latencies_ms, 99), 3),
        "rps": round(requests / run.elapsed_s, 1),
    }


def _block(direct: Run, cascade: Run, direct_requests: int, cascade_requests: int) -> dict[str, Any]:
    return {
        "direct": _summary(direct, direct_requests),
        "cascade": _summary(cascade, cascade_requests),
        "added_p50_ms": round(_pct(cascade.latencies_ms, 50) - _pct(direct.latencies_ms, 50), 3),
        "added_p99_ms": round(_pct(cascade.latencies_ms, 99) - _pct(direct.latencies_ms, 99), 3),
        "overhead_header_p50_ms": round(_pct(cascade.overhead_ms, 50), 3),
        "overhead_header_p99_ms": round(_pct(cascade.overhead_ms, 99), 3),
        "service_cpu_ms_per_request": round(cascade.cpu_s * 1000 / cascade_requests, 3),
    }


@dataclass
class Bench:
    """The benchmark's database (its own PostgreSQL schema), key state and the service's environment."""

    schema_name: str
    database_url: str
    state: Path
    env: dict[str, str]

    @classmethod
    def create(cls) -> Bench:
        schema_name = f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(POSTGRES_URL)
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema_name}"')
        admin.dispose()
        url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema_name}"})
        database_url = url.render_as_string(hide_password=False)
        state = Path(tempfile.mkdtemp(prefix="accute-bench-"))
        env = {
            "ACCUTE_DATABASE_URL": database_url,
            "ACCUTE_KEK_FILE": str(state / "kek.json"),
            "ACCUTE_WEIGHTS_DIR": str(state / "weights"),
            "ACCUTE_CACHE_ENABLED": "false",
            "ACCUTE_CONFIG_CACHE_TTL_S": "5",
            # The provider listens on loopback, which the egress policy refuses unless allowed.
            "ACCUTE_EGRESS_ALLOW": "127.0.0.1",
            # The security gate's rate limits count every request but never refuse one here.
            "ACCUTE_RATE_LIMIT_ORG_PER_MINUTE": "100000000",
            "ACCUTE_RATE_LIMIT_ADDRESS_PER_MINUTE": "100000000",
        }
        return cls(schema_name, database_url, state, env)

    def tenant(self, provider_port: int) -> tuple[sa.Engine, uuid.UUID, str]:
        """Migrate, then one organization with one config pointing at the provider, and its token."""
        from orchestrator import configs
        from orchestrator.service import build_services
        from schema import directory, migrate
        from schema.config import Settings
        from schema.db import make_engine, transaction

        engine = make_engine(self.database_url)
        migrate.upgrade(engine)
        settings = Settings(database_url=self.database_url, kek_file=self.state / "kek.json")
        services = build_services(settings, engine)
        with transaction(engine) as session:
            org = directory.create_organization(session, "bench firm").id
            body = configs.ConfigCreate(
                provider="openai",
                display_name="bench",
                model_id="bench-model",
                api_endpoint=f"http://127.0.0.1:{provider_port}/v1",
                api_key="sk-bench",
                rate_limit_rpm=1_000_000,
                rate_limit_tpm=1_000_000_000,
            )
            configs.create(session, services.keyring, org, body)
        token = services.tokens.issue(role="org_user", organization_id=org, ttl_s=3600)
        return engine, org, token

    def drop(self) -> None:
        admin = sa.create_engine(POSTGRES_URL)
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{self.schema_name}" CASCADE')
        admin.dispose()


def _uptime_load() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per target at --concurrency")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--serial-requests", type=int, default=1000, help="requests per target at concurrency 1"
    )
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the service")
    parser.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="requests/s of the open-loop run (at most --concurrency in flight); 0 skips it",
    )
    parser.add_argument("--rate-requests", type=int, default=3000, help="requests per target at --rate")
    parser.add_argument(
        "--stream-requests",
        type=int,
        default=300,
        help="streamed requests per target at concurrency 1 (time to first token); 0 skips them",
    )
    parser.add_argument(
        "--request-ids",
        action="store_true",
        help="send a fresh X-Request-Id with every cascade request (the idempotent, claimed path)",
    )
    parser.add_argument(
        "--stream-only",
        action="store_true",
        help="measure only the streamed time to first token (after the --warmup requests)",
    )
    args = parser.parse_args()
    global REQUEST_IDS
    REQUEST_IDS = args.request_ids

    bench = Bench.create()
    provider_port, service_port = _free_port(), _free_port()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_run_provider, args=(provider_port,), daemon=True),
        context.Process(target=_run_service, args=(service_port, bench.env, args.workers)),
    ]
    try:
        engine, org, token = bench.tenant(provider_port)
        for process in processes:
            process.start()
        _wait(provider_port, "/")
        _wait(service_port, "/healthz")
        service_pids = _tree(processes[1].pid or 0)
        provider_pids = [processes[0].pid or 0]

        direct = _request_bytes(
            provider_port,
            "/v1/chat/completions",
            {"model": "bench-model", "messages": [{"role": "user", "content": "What is the VAT rate?"}]},
            {"authorization": "Bearer sk-bench"},
        )
        cascade = _request_bytes(
            service_port,
            f"/v1/orgs/{org}/agents/luca/chat",
            {"message": "What is the VAT rate?"},
            {"authorization": f"Bearer {token}"},
        )
        sent = 0
        for _ in range(2):
            _measure(provider_port, direct, args.warmup, args.concurrency, provider_pids)
            _measure(service_port, cascade, args.warmup, args.concurrency, service_pids)
            sent += args.warmup
        load_before = _uptime_load()
        blocks: dict[str, Any] = {}
        if not args.stream_only:
            serial_direct = _measure(provider_port, direct, args.serial_requests, 1, provider_pids)
            serial_cascade = _measure(service_port, cascade, args.serial_requests, 1, service_pids)
            loaded_direct = _measure(provider_port, direct, args.requests, args.concurrency, provider_pids)
            loaded_cascade = _measure(service_port, cascade, args.requests, args.concurrency, service_pids)
            sent += args.serial_requests + args.requests
            blocks = {
                "c1": _block(serial_direct, serial_cascade, args.serial_requests, args.serial_requests),
                f"c{args.concurrency}": _block(loaded_direct, loaded_cascade, args.requests, args.requests),
            }
        paced: tuple[Run, Run] | None = None
        if args.rate > 0 and not args.stream_only:
            paced = (
                _measure(
                    provider_port, direct, args.rate_requests, args.concurrency, provider_pids, args.rate
                ),
                _measure(
                    service_port, cascade, args.rate_requests, args.concurrency, service_pids, args.rate
                ),
            )
            sent += args.rate_requests
        streamed: dict[str, Any] = {}
        if args.stream_requests > 0:
            import uvloop

            question = {"messages": [{"role": "user", "content": "What is the VAT rate?"}], "stream": True}
            direct_stream = _request_bytes(
                provider_port,
                "/v1/chat/completions",
                {"model": "bench-model", **question, "stream_options": {"include_usage": True}},
                {"authorization": "Bearer sk-bench"},
            )
            door_stream = _request_bytes(
                service_port,
                "/v1/chat/completions",
                {"model": "agent/luca", **question},
                {"authorization": f"Bearer {token}"},
            )
            uvloop.run(_stream_load(service_port, door_stream, 50))  # warm-up
            direct_ttft, direct_whole = uvloop.run(
                _stream_load(provider_port, direct_stream, args.stream_requests)
            )
            door_ttft, door_whole = uvloop.run(_stream_load(service_port, door_stream, args.stream_requests))
            sent += args.stream_requests + 50
            streamed = {
                "stream_c1": {
                    "direct_ttft_p50_ms": round(_pct(direct_ttft, 50), 3),
                    "cascade_ttft_p50_ms": round(_pct(door_ttft, 50), 3),
                    "added_ttft_p50_ms": round(_pct(door_ttft, 50) - _pct(direct_ttft, 50), 3),
                    "added_ttft_p99_ms": round(_pct(door_ttft, 99) - _pct(direct_ttft, 99), 3),
                    "direct_whole_p50_ms": round(_pct(direct_whole, 50), 3),
                    "cascade_whole_p50_ms": round(_pct(door_whole, 50), 3),
                    "provider_gap_ms": STREAM_GAP_S * 1000,
                }
            }
        load_after = _uptime_load()

        with engine.connect() as connection:
            logged = connection.execute(sa.text("SELECT count(*) FROM llm_usage_log")).scalar_one()
            claimed = connection.execute(sa.text("SELECT count(*) FROM llm_requests")).scalar_one()
        result: dict[str, Any] = {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "serial_requests": args.serial_requests,
            "workers": args.workers,
            "load_average_before": load_before,
            "load_average_after": load_after,
            **blocks,
            **(
                {
                    f"open_loop_{args.rate:g}_per_s": _block(
                        paced[0], paced[1], args.rate_requests, args.rate_requests
                    )
                }
                if paced is not None
                else {}
            ),
            **streamed,
            "request_ids": args.request_ids,
            "cascade_requests_sent": sent,
            "llm_requests_rows": claimed,
            "llm_usage_log_rows": logged,
            "every_request_logged": logged == sent == claimed,
        }
        print(json.dumps(result, indent=2))
        engine.dispose()
        if logged != sent:
            raise SystemExit(f"{sent} cascade requests but {logged} llm_usage_log rows")
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        bench.drop()


if __name__ == "__main__":
    main()
