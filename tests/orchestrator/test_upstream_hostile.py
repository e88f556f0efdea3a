"""One adversarial upstream suite, run against every HTTP client option (builtin and httpx).

Each test is a hostile provider on loopback (bombs, oversize, trickle, resets, garbage, NUL) and
asserts what the client must do: fail with the right ``UpstreamError`` within its timeout, hold
bounded memory, and keep the event loop responsive while it does.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from orchestrator.egress import EgressPolicy, is_internal, parse_address
from orchestrator.upstream import (
    EgressDenied,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    make_upstream,
)
from tests.orchestrator.test_upstream import _json_reply, _run, _serve

CLIENTS = ["builtin", "httpx"]
LIMIT = 1 << 20  # 1 MiB: the suite's max_response_bytes

_BOMB = gzip.compress(b"0" * (300 * 1024 * 1024), 9)  # about 300 kB that unpack to 300 MiB
_DEFLATE_BOMB = zlib.compress(b"1" * (300 * 1024 * 1024), 9)


async def _with_ticker(call: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """Run ``call`` while a ticker measures the longest the event loop was unavailable (seconds)."""
    gaps = [0.0]
    stop = False

    async def tick() -> None:
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        result: Any = await call()
    except Exception as exc:
        result = exc
    stop = True
    await ticker
    return result, gaps[0]


def _encoded(body: bytes, encoding: str, chunked: bool = False) -> Callable[..., Awaitable[bool]]:
    async def reply(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if chunked:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-encoding: " + encoding.encode() + b"\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            for start in range(0, len(body), 16384):
                part = body[start : start + 16384]
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(_json_reply(body, b"content-encoding: " + encoding.encode() + b"\r\n"))
        return True

    return reply


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    ("body", "encoding", "chunked"),
    [(_BOMB, "gzip", False), (_BOMB, "gzip", True), (_DEFLATE_BOMB, "deflate", False)],
    ids=["gzip", "gzip-chunked", "deflate"],
)
def test_a_compression_bomb_stops_at_the_limit_without_freezing_the_loop(
    kind: str, body: bytes, encoding: str, chunked: bool
) -> None:
    async def test() -> None:
        state, server = await _serve(_encoded(body, encoding, chunked))
        client = make_upstream(kind, max_response_bytes=LIMIT)
        async with server:
            started = time.monotonic()
            result, gap = await _with_ticker(lambda: client.post_json(state.url, {}, {}, 5))
            elapsed = time.monotonic() - started
        await client.aclose()
        assert isinstance(result, UpstreamTooLarge), result
        assert elapsed < 2, elapsed
        assert gap < 0.25, f"the event loop stalled for {gap:.3f}s"

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_compressed_reply_under_the_limit_is_decoded(kind: str) -> None:
    payload = b'{"a": "' + b"z" * (LIMIT - 100) + b'"}'

    async def test() -> None:
        state, server = await _serve(_encoded(gzip.compress(payload), "gzip"))
        client = make_upstream(kind, max_response_bytes=LIMIT)
        async with server:
            response = await client.post_json(state.url, {}, {}, 5)
        await client.aclose()
        assert response.body == payload

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
def test_an_oversize_reply_is_too_large_whatever_its_framing(kind: str) -> None:
    big = b"[" + b"1," * LIMIT + b"1]"

    async def declared(head: bytes, writer: asyncio.StreamWriter) -> bool:
        # Announces 100 GB and sends little: refused from the header, without waiting for it.
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000000\r\n\r\n[1]")
        return True

    async def chunked(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for start in range(0, len(big), 65536):
            part = big[start : start + 65536]
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        writer.write(b"0\r\n\r\n")
        return True

    async def unframed(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + big)
        return False

    async def test() -> None:
        client = make_upstream(kind, max_response_bytes=LIMIT)
        for reply in (declared, chunked, unframed):
            state, server = await _serve(reply)
            async with server:
                started = time.monotonic()
                with pytest.raises(UpstreamTooLarge):
                    await client.post_json(state.url, {}, {}, 3)
                assert time.monotonic() - started < 2
        await client.aclose()

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_trickling_reply_times_out_on_time(kind: str) -> None:
    async def trickle(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)
        return False

    async def test() -> None:
        state, server = await _serve(trickle)
        client = make_upstream(kind)
        async with server:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await client.post_json(state.url, {}, {}, 0.5)
            elapsed = time.monotonic() - started
        await client.aclose()
        assert 0.4 < elapsed < 1.5

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "raw",
    [
        b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"partial": ',  # reset mid-body
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n{}",  # no colon
        b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n{}",  # negative length
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\n{}",  # conflicting lengths
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # bad chunk
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 4\r\n\r\nnope",  # bad gzip
        b"",  # closed without a word
        b"HTTP/1.1 +20 OK\r\ncontent-length: 2\r\n\r\n{}",  # a status that int() would take
        b"HTTP/1.1 200 OK\r\nx-a: b\x00c\r\ncontent-length: 2\r\n\r\n{}",  # NUL in a header
        b"HTTP/1.1 200 OK\r\ncontent-length: 1e3\r\n\r\n{}",  # a length in another notation
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",  # negative chunk
    ],
    ids=[
        "reset",
        "ssh",
        "header",
        "negative",
        "conflict",
        "chunk",
        "gzip",
        "silent-close",
        "plus-status",
        "nul-header",
        "float-length",
        "negative-chunk",
    ],
)
def test_broken_replies_are_upstream_errors_not_crashes(kind: str, raw: bytes) -> None:
    async def reply(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        return False

    async def test() -> None:
        state, server = await _serve(reply)
        client = make_upstream(kind)
        async with server:
            started = time.monotonic()
            with pytest.raises(UpstreamError) as caught:
                await client.post_json(state.url, {}, {}, 3)
        await client.aclose()
        assert not isinstance(caught.value, UpstreamTimeout)
        assert time.monotonic() - started < 2

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
def test_nul_and_line_breaks_in_headers_are_refused_before_connecting(kind: str) -> None:
    async def test() -> None:
        state, server = await _serve()
        client = make_upstream(kind)
        async with server:
            for headers in ({"authorization": "Bearer k\x00"}, {"x-a\r\nx-b": "1"}, {"x": "a\nb"}):
                with pytest.raises(UpstreamError):
                    await client.post_json(state.url, {}, headers, 3)
        await client.aclose()
        assert state.connections == 0

    _run(test)


# --- egress policy (SSRF) --------------------------------------------------------------------------

INTERNAL_SPELLINGS = [
    "127.0.0.1",
    "0x7f000001",
    "2130706433",
    "127.1",
    "0177.0.0.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "localhost",
]


@pytest.mark.parametrize("kind", CLIENTS)
def test_the_egress_policy_refuses_internal_addresses_on_the_resolved_address(kind: str) -> None:
    async def test() -> None:
        state, server = await _serve()
        port = state.url.split(":")[2].split("/")[0]
        strict = make_upstream(kind, egress=EgressPolicy.parse(""))
        allowing = make_upstream(kind, egress=EgressPolicy.parse("127.0.0.0/8"))
        async with server:
            for host in INTERNAL_SPELLINGS:
                # Refused by the policy (or, for spellings httpx will not parse, as an invalid URL).
                with pytest.raises(UpstreamError) as caught:
                    await strict.post_json(f"http://{host}:{port}/v1/chat/completions", {}, {}, 3)
                assert (kind, host) == ("httpx", "0177.0.0.1") or isinstance(caught.value, EgressDenied), host
            assert state.connections == 0
            # The operator's fallback is exempt; an allow-listed network is allowed.
            exempt = await strict.post_json(state.url, {}, {}, 3, guarded=False)
            allowed = await allowing.post_json(f"http://0x7f000001:{port}/v1/chat/completions", {}, {}, 3)
            # A connection opened for the exempt fallback is never lent to a guarded call.
            with pytest.raises(EgressDenied):
                await strict.post_json(state.url, {}, {}, 3)
        await strict.aclose()
        await allowing.aclose()
        assert exempt.status == 200 and allowed.status == 200

    _run(test)


@pytest.mark.parametrize(
    ("host", "internal"),
    [
        ("169.254.169.254", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("255.255.255.255", True),
        ("[fe80::1]", True),
        ("[fc00::1]", True),
        ("[2002:7f00:1::]", True),  # 6to4 of 127.0.0.1
        ("[64:ff9b::a9fe:a9fe]", True),  # NAT64 of 169.254.169.254
        ("8.8.8.8", False),
        ("[2606:4700:4700::1111]", False),
    ],
)
def test_internal_address_classification(host: str, internal: bool) -> None:
    address = parse_address(host)
    assert address is not None and is_internal(address) is internal


def _rst(writer: asyncio.StreamWriter) -> None:
    """Reset the connection (RST, not FIN): linger 0, then abort."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_reset_mid_body_is_an_upstream_error(kind: str) -> None:
    async def reset(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"choices": ')
        await writer.drain()
        await asyncio.sleep(0.05)
        _rst(writer)
        return False

    async def test() -> None:
        state, server = await _serve(reset)
        client = make_upstream(kind)
        async with server:
            with pytest.raises(UpstreamError) as caught:
                await client.post_json(state.url, {}, {}, 3)
        await client.aclose()
        assert not isinstance(caught.value, UpstreamTimeout)

    _run(test)


# --- streams (open_stream): the same hostility while a reply is read as it arrives ------------------


def _sse_head(extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        + extra
        + b"\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _read_stream(client: Any, url: str, timeout: float = 3) -> list[bytes]:
    stream = await client.open_stream(url, {}, {}, timeout)
    try:
        async with asyncio.timeout(timeout):
            return [chunk async for chunk in stream.chunks()]
    finally:
        await stream.aclose()


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_stream_is_read_as_it_arrives_and_its_connection_reused(kind: str) -> None:
    async def events(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_sse_head())
        for i in range(3):
            writer.write(_chunk(f"data: {i}\n\n".encode()))
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(b"0\r\n\r\n")
        return True

    async def test() -> None:
        state, server = await _serve(events)
        client = make_upstream(kind)
        async with server:
            started = time.monotonic()
            stream = await client.open_stream(state.url, {"stream": True}, {}, 3)
            arrivals = []
            async for chunk in stream.chunks():
                arrivals.append((time.monotonic() - started, chunk))
            await stream.aclose()
            again = await _read_stream(client, state.url)
        await client.aclose()
        assert b"".join(c for _, c in arrivals) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert arrivals[-1][0] - arrivals[0][0] >= 0.15  # not buffered to the end
        assert b"".join(again).count(b"data:") == 3
        assert state.connections == 1
        assert b"accept: text/event-stream" in state.requests[0][0].lower()

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "case",
    ["oversize", "reset", "bad-chunk", "compressed", "early-close"],
)
def test_a_hostile_stream_is_an_upstream_error(kind: str, case: str) -> None:
    async def hostile(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if case == "compressed":
            writer.write(_sse_head(b"content-encoding: gzip\r\n") + _chunk(gzip.compress(b"data: 1\n\n")))
            return False
        writer.write(_sse_head())
        writer.write(_chunk(b"data: first\n\n"))
        await writer.drain()
        if case == "oversize":
            for _ in range(LIMIT // 65536 + 2):
                writer.write(_chunk(b"x" * 65536))
                await writer.drain()
        elif case == "reset":
            await asyncio.sleep(0.05)
            _rst(writer)
        elif case == "bad-chunk":
            writer.write(b"zz\r\nwhat\r\n")
        return False  # early-close: the server closes before the last chunk

    async def test() -> None:
        state, server = await _serve(hostile)
        client = make_upstream(kind, max_response_bytes=LIMIT)
        async with server:
            started = time.monotonic()
            with pytest.raises(UpstreamError) as caught:
                await _read_stream(client, state.url)
        await client.aclose()
        assert not isinstance(caught.value, UpstreamTimeout)
        if case == "oversize":
            assert isinstance(caught.value, UpstreamTooLarge)
        assert time.monotonic() - started < 2

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_stream_head_that_never_comes_times_out_and_frees_its_slot(kind: str) -> None:
    async def silent(head: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(3)
        return False

    async def test() -> None:
        state, server = await _serve(silent)
        client = make_upstream(kind, max_connections=1, max_per_origin=1)
        async with server:
            for _ in range(2):  # the second would wait forever if the first kept its slot
                started = time.monotonic()
                with pytest.raises(UpstreamTimeout):
                    await client.open_stream(state.url, {}, {}, 0.3)
                assert time.monotonic() - started < 1.5
        await client.aclose()

    _run(test)
