"""The provider HTTP client (``orchestrator.upstream``) against real servers on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fl_server.credentials import make_tls
from orchestrator.upstream import UpstreamClient, UpstreamError, UpstreamTimeout, make_upstream

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]
"""Writes the answer to one request (its head); returns False to close the connection after it."""


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)


def _json_reply(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _default(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(_json_reply())
    return True


async def _silent(head: bytes, writer: asyncio.StreamWriter) -> bool:
    """Never answers (within any test's timeout)."""
    await asyncio.sleep(5)
    return False


async def _huge(head: bytes, writer: asyncio.StreamWriter) -> bool:
    """A valid reply of about 2 kB (over the tests' 1000-byte limit)."""
    writer.write(_json_reply(b"[" + b"1," * 1000 + b"1]"))
    return True


async def _serve(
    reply: Reply = _default, ssl_context: ssl.SSLContext | None = None
) -> tuple[Server, asyncio.Server]:
    state = Server(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                state.requests.append((head, body))
                keep = await reply(head, writer)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    state.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/v1/chat/completions?x=1"
    return state, server


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_keep_alive_connection_is_reused_and_the_request_is_json() -> None:
    async def test() -> None:
        state, server = await _serve()
        client = UpstreamClient()
        async with server:
            replies = [
                await client.post_json(state.url, {"n": i, "text": "é"}, {"authorization": "Bearer k"}, 5)
                for i in range(3)
            ]
        await client.aclose()
        assert [r.status for r in replies] == [200] * 3 and replies[0].json() == {"ok": True}
        assert state.connections == 1 and len(state.requests) == 3
        head, body = state.requests[2]
        assert head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
        assert (
            b"\r\nauthorization: Bearer k\r\n" in head and b"\r\ncontent-type: application/json\r\n" in head
        )
        assert json.loads(body) == {"n": 2, "text": "é"}

    _run(test)


def test_chunked_gzip_informational_and_close_delimited_replies_are_read() -> None:
    payload = json.dumps({"choices": ["x" * 3000]}).encode()

    async def reply(head: bytes, writer: asyncio.StreamWriter) -> bool:
        kind = len(kind_counter)
        kind_counter.append(1)
        if kind == 0:  # chunked, gzip-encoded, with a trailer
            packed = gzip.compress(payload)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n")
            for start in range(0, len(packed), 500):
                chunk = packed[start : start + 500]
                writer.write(f"{len(chunk):x};ext=1\r\n".encode() + chunk + b"\r\n")
            writer.write(b"0\r\nx-trailer: 1\r\n\r\n")
            return True
        # no Content-Length: the body ends when the server closes the connection
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + payload)
        return False

    kind_counter: list[int] = []

    async def test() -> None:
        state, server = await _serve(reply)
        client = UpstreamClient()
        async with server:
            chunked = await client.post_json(state.url, {}, {}, 5)
            delimited = await client.post_json(state.url, {}, {}, 5)
            again = await client.post_json(state.url, {}, {}, 5)
        await client.aclose()
        assert chunked.body == payload and delimited.body == payload and again.body == payload
        assert state.connections == 2  # the close-delimited reply cannot be followed on its connection

    _run(test)


def test_a_connection_the_server_closed_or_that_sat_idle_too_long_is_not_reused() -> None:
    async def once(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_json_reply())
        return False  # closes without saying "connection: close"

    async def test() -> None:
        closing, closing_server = await _serve(once)
        steady, steady_server = await _serve()
        client = UpstreamClient(keepalive_expiry_s=0.2)
        async with closing_server, steady_server:
            for _ in range(3):
                assert (await client.post_json(closing.url, {}, {}, 5)).status == 200
                await asyncio.sleep(0.05)  # the server's FIN arrives
            await client.post_json(steady.url, {}, {}, 5)
            await client.post_json(steady.url, {}, {}, 5)
            await asyncio.sleep(0.3)
            await client.post_json(steady.url, {}, {}, 5)
        await client.aclose()
        assert closing.connections == 3
        assert steady.connections == 2  # reused once, then expired

    _run(test)


def test_timeout_refused_connection_and_garbage_are_errors() -> None:
    async def garbage(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return False

    async def test() -> None:
        slow, slow_server = await _serve(_silent)
        bad, bad_server = await _serve(garbage)
        big, big_server = await _serve(_huge)
        client = UpstreamClient(max_response_bytes=1000)
        async with slow_server, bad_server, big_server:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await client.post_json(slow.url, {}, {}, 0.3)
            assert time.monotonic() - started < 2
            with pytest.raises(UpstreamError, match="not an HTTP"):
                await client.post_json(bad.url, {}, {}, 5)
            with pytest.raises(UpstreamError, match="larger than the limit"):
                await client.post_json(big.url, {}, {}, 5)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await client.post_json(slow.url, {}, {}, 5)  # the server is gone
        await client.aclose()

    _run(test)


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async def test() -> None:
        state, server = await _serve()
        client = UpstreamClient()
        async with server:
            with pytest.raises(UpstreamError, match="header"):
                await client.post_json(state.url, {}, {"authorization": "Bearer k\r\nx-evil: 1"}, 5)
            with pytest.raises(UpstreamError, match="header"):
                await client.post_json(state.url, {}, {"authorization": "Bearer ключ"}, 5)
            with pytest.raises(UpstreamError):
                await client.post_json("ftp://127.0.0.1/x", {}, {}, 5)
        await client.aclose()
        assert state.connections == 0

    _run(test)


def _self_signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 with its key (run-local's throwaway ones)."""
    files = make_tls(tmp_path / "tls", "127.0.0.1")
    return files.ca_cert, files.server_cert, files.server_key


def test_https_verifies_the_server_certificate(tmp_path: Path) -> None:
    ca, cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(ca))

    async def test() -> None:
        state, server = await _serve(ssl_context=server_context)
        client = UpstreamClient(ssl_context=trusting)
        default = UpstreamClient()
        async with server:
            assert (await client.post_json(state.url, {"a": 1}, {}, 5)).json() == {"ok": True}
            assert (await client.post_json(state.url, {"a": 2}, {}, 5)).status == 200
            with pytest.raises(UpstreamError, match="cannot connect"):
                await default.post_json(state.url, {}, {}, 5)  # not signed by a public CA
        await client.aclose()
        await default.aclose()
        assert [json.loads(body) for _, body in state.requests] == [{"a": 1}, {"a": 2}]

    _run(test)


# --- the behaviour both clients share (ACCUTE_UPSTREAM_CLIENT=builtin | httpx) ------------------------

CLIENTS = ["builtin", "httpx"]


@pytest.mark.parametrize("kind", CLIENTS)
def test_shared_json_post_over_one_kept_alive_connection(kind: str) -> None:
    async def test() -> None:
        state, server = await _serve()
        client = make_upstream(kind)
        async with server:
            replies = [
                await client.post_json(state.url, {"n": i}, {"authorization": "Bearer k"}, 5)
                for i in range(3)
            ]
        await client.aclose()
        assert [r.status for r in replies] == [200] * 3 and replies[0].json() == {"ok": True}
        assert replies[0].headers["content-type"] == "application/json"
        assert state.connections == 1 and [json.loads(b) for _, b in state.requests] == [
            {"n": i} for i in range(3)
        ]
        head = state.requests[0][0].lower()
        assert (
            b"\r\nauthorization: bearer k\r\n" in head and b"\r\ncontent-type: application/json\r\n" in head
        )

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
def test_shared_chunked_gzip_reply_is_decoded(kind: str) -> None:
    payload = json.dumps({"choices": ["y" * 5000]}).encode()

    async def reply(head: bytes, writer: asyncio.StreamWriter) -> bool:
        packed = gzip.compress(payload)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n")
        for start in range(0, len(packed), 700):
            chunk = packed[start : start + 700]
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        writer.write(b"0\r\n\r\n")
        return True

    async def test() -> None:
        state, server = await _serve(reply)
        client = make_upstream(kind)
        async with server:
            response = await client.post_json(state.url, {}, {}, 5)
        await client.aclose()
        assert response.body == payload

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
def test_shared_timeout_refusal_size_limit_and_header_injection_are_upstream_errors(kind: str) -> None:
    async def test() -> None:
        slow, slow_server = await _serve(_silent)
        big, big_server = await _serve(_huge)
        fine, fine_server = await _serve()
        client = make_upstream(kind, max_response_bytes=1000)
        async with slow_server, big_server, fine_server:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await client.post_json(slow.url, {}, {}, 0.3)
            assert time.monotonic() - started < 2
            with pytest.raises(UpstreamError):
                await client.post_json(big.url, {}, {}, 5)
            with pytest.raises(UpstreamError):
                await client.post_json(fine.url, {}, {"authorization": "Bearer k\r\nx-evil: 1"}, 5)
        with pytest.raises(UpstreamError):
            await client.post_json(slow.url, {}, {}, 5)  # the server is gone
        await client.aclose()
        assert fine.connections == 0  # the injected header was refused before connecting

    _run(test)


@pytest.mark.parametrize("kind", CLIENTS)
def test_shared_https_trusts_only_the_given_authority(kind: str, tmp_path: Path) -> None:
    ca, cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def test() -> None:
        state, server = await _serve(ssl_context=server_context)
        trusting = make_upstream(kind, ssl_context=ssl.create_default_context(cafile=str(ca)))
        default = make_upstream(kind)
        async with server:
            assert (await trusting.post_json(state.url, {"a": 1}, {}, 5)).json() == {"ok": True}
            with pytest.raises(UpstreamError):
                await default.post_json(state.url, {}, {}, 5)  # not signed by a public CA
        await trusting.aclose()
        await default.aclose()

    _run(test)
