"""A real HTTP server on loopback that speaks each provider's wire format (tests and the benchmark).

It answers by path: ``/chat/completions`` (OpenAI family), ``/openai/deployments/<d>/chat/completions``
(Azure OpenAI), ``/v1/messages`` (Anthropic), ``/v1beta/models/<m>:generateContent`` (Gemini),
``/v2/chat`` (Cohere v2); it checks the provider's auth header against ``api_key`` (401 otherwise)
and records every request. ``script`` queues replies (status, headers) served before normal ones.
"""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeProvider:
    api_key: str | None = None
    reply: str = "hello from the fake provider"
    input_tokens: int = 10
    output_tokens: int = 20
    cached_tokens: int = 0
    delay_s: float = 0.0
    url: str = ""
    received: list[Received] = field(default_factory=list)
    _script: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    always_status: int | None = None

    def script(self, *replies: tuple[int, dict[str, str]]) -> None:
        with self._lock:
            self._script.extend(replies)

    def next_scripted(self) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    # -- wire formats ------------------------------------------------------------------------------
    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path.endswith("/chat/completions"):
            key = headers.get("api-key") if "/openai/deployments/" in path else _bearer(headers)
            if self.api_key is not None and key != self.api_key:
                return 401, {"error": {"message": "invalid api key"}}
            usage: dict[str, Any] = {
                "prompt_tokens": self.input_tokens,
                "completion_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
            }
            if self.cached_tokens:
                usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
            return 200, {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        if path.endswith("/v1/messages"):
            if self.api_key is not None and headers.get("x-api-key") != self.api_key:
                return 401, {"type": "error", "error": {"type": "authentication_error"}}
            return 200, {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": self.reply}],
                "usage": {
                    "input_tokens": self.input_tokens - self.cached_tokens,
                    "cache_read_input_tokens": self.cached_tokens,
                    "cache_creation_input_tokens": 0,
                    "output_tokens": self.output_tokens,
                },
            }
        if path.endswith(":generateContent"):
            if self.api_key is not None and headers.get("x-goog-api-key") != self.api_key:
                return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}}
            return 200, {
                "candidates": [{"content": {"role": "model", "parts": [{"text": self.reply}]}}],
                "usageMetadata": {
                    "promptTokenCount": self.input_tokens,
                    "cachedContentTokenCount": self.cached_tokens,
                    "candidatesTokenCount": self.output_tokens,
                    "totalTokenCount": self.input_tokens + self.output_tokens,
                },
            }
        if path.endswith("/v2/chat"):
            if self.api_key is not None and _bearer(headers) != self.api_key:
                return 401, {"message": "invalid api token"}
            return 200, {
                "id": "c1",
                "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": self.reply}]},
                "usage": {
                    "billed_units": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
                    "tokens": {"input_tokens": self.input_tokens + 5, "output_tokens": self.output_tokens},
                },
            }
        return 404, {"error": "unknown path"}


def _bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    return value[7:] if value.lower().startswith("bearer ") else None


def _handler(provider: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            provider.record(Received(parts.path, parse_qs(parts.query), headers, json.loads(raw or b"{}")))
            if provider.delay_s:
                threading.Event().wait(provider.delay_s)
            scripted = provider.next_scripted()
            extra: dict[str, str] = {}
            if scripted is not None:
                status, extra = scripted
                body: dict[str, Any] = {"error": {"message": f"scripted {status}"}}
            elif provider.always_status is not None:
                status, body = provider.always_status, {"error": {"message": "down"}}
            else:
                status, body = provider.answer(parts.path, headers)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


@contextmanager
def running(provider: FakeProvider) -> Iterator[FakeProvider]:
    """Serve ``provider`` on 127.0.0.1 (ephemeral port) until the block ends; ``provider.url`` is set."""
    server = _Server(("127.0.0.1", 0), _handler(provider))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (ephemeral port) in a thread; yields its base URL."""
    import socket
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    from orchestrator.http_protocol import LimitedHttpToolsProtocol

    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", backlog=2048, http=LimitedHttpToolsProtocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# --- hostile providers ----------------------------------------------------------------------------

HostileReply = Callable[[bytes, bytes, socket.socket], None]
"""Answers one request (head, body) by writing whatever it likes to the socket."""


@dataclass
class HostileProvider:
    """A raw TCP server on loopback that answers every request with ``reply`` (bombs, garbage...)."""

    reply: HostileReply
    url: str = ""
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> None:
        with self._lock:
            self.requests += 1


def _read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head, rest[:length]


class _RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


@contextmanager
def _serving_raw(handler: type[socketserver.BaseRequestHandler]) -> Iterator[str]:
    """A threaded TCP server on a loopback port answering with ``handler``; yields its base URL."""
    server = _RawServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_hostile(reply: HostileReply) -> Iterator[HostileProvider]:
    """Serve ``reply`` on 127.0.0.1; one request per connection (the reply decides what to send)."""
    provider = HostileProvider(reply)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            try:
                request = _read_request(conn)
                if request is None:
                    return
                provider.count()
                reply(request[0], request[1], conn)
            except OSError:
                return

    with _serving_raw(Handler) as url:
        provider.url = url
        yield provider


def http_reply(
    body: bytes, status: str = "200 OK", headers: dict[str, str] | None = None, length: bool = True
) -> bytes:
    lines = [f"HTTP/1.1 {status}", "content-type: application/json", "connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def openai_body(content: str = "ok", prompt: Any = 10, completion: Any = 20) -> bytes:
    """An OpenAI chat completion; numbers are written as given (so 'Infinity' or 3e9 can be sent)."""
    usage = f'"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion}}}'
    choice = f'{{"index":0,"message":{{"role":"assistant","content":{json.dumps(content)}}}}}'
    return f'{{"choices":[{choice}],{usage}}}'.encode()


# --- a provider that streams ----------------------------------------------------------------------


@dataclass
class StreamingProvider:
    """A real SSE provider on loopback: ``pieces`` one event each, ``gap_s`` apart (a trickle).

    ``style``: ``openai`` (chat.completion.chunk events, a usage chunk when asked, ``[DONE]``) or
    ``anthropic`` (message_start … message_stop). Records what it sent and when the client hung up.
    """

    pieces: list[str]
    gap_s: float = 0.0
    first_delay_s: float = 0.0
    """How long the provider thinks before its first content event (a slow first token)."""
    style: str = "openai"
    input_tokens: int = 17
    output_tokens: int = 0
    """Reported output tokens (0: the number of pieces)."""
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    """Content events written before the end or the hang-up."""
    hung_up: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    first_sent_at: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    ended_at: list[float] = field(default_factory=list)

    def events(self, body: dict[str, Any]) -> Iterator[tuple[bytes, bool]]:
        """(event bytes, whether it carries content)."""
        out = self.output_tokens or len(self.pieces)
        if self.style == "anthropic":
            start = {
                "type": "message_start",
                "message": {"usage": {"input_tokens": self.input_tokens, "output_tokens": 1}},
            }
            yield _sse_event(start, "message_start"), False
            for piece in self.pieces:
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                }
                yield _sse_event(delta, "content_block_delta"), True
            yield (
                _sse_event({"type": "message_delta", "usage": {"output_tokens": out}}, "message_delta"),
                False,
            )
            yield _sse_event({"type": "message_stop"}, "message_stop"), False
            return
        for i, piece in enumerate(self.pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            yield _sse_event(chunk), True
        yield _sse_event({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), False
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": self.input_tokens, "completion_tokens": out}
            yield _sse_event({"id": "c1", "choices": [], "usage": usage}), False
        yield b"data: [DONE]\n\n", False


def _sse_event(data: dict[str, Any], name: str | None = None) -> bytes:
    prefix = f"event: {name}\n" if name else ""
    return (prefix + "data: " + json.dumps(data) + "\n\n").encode()


@contextmanager
def running_streaming(provider: StreamingProvider) -> Iterator[StreamingProvider]:
    """Serve ``provider`` on 127.0.0.1: chunked ``text/event-stream``, one chunk per event."""
    import time

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            while True:
                request = _read_request(conn)
                if request is None:
                    return
                body = json.loads(request[1] or b"{}")
                provider.requests.append(body)
                provider.arrivals.append(time.monotonic())
                head = (
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
                )
                try:
                    conn.sendall(head)
                    for event, content in provider.events(body):
                        if content and provider.gap_s and provider.sent:
                            time.sleep(provider.gap_s)
                        if content and provider.first_delay_s and not provider.sent:
                            time.sleep(provider.first_delay_s)
                        conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                        if content:
                            provider.sent += 1
                            provider.first_sent_at = provider.first_sent_at or time.monotonic()
                    conn.sendall(b"0\r\n\r\n")
                    provider.ended_at.append(time.monotonic())
                    provider.finished.set()
                except OSError:
                    provider.hung_up.set()
                    return

    with _serving_raw(Handler) as url:
        provider.url = url
        yield provider


def wait_ready(base: str, processes: list[subprocess.Popen[str]], seconds: float = 90) -> None:
    """Until ``{base}/readyz`` answers 200; fails if a server process exits or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, (
            "the server did not come up"
        )
        time.sleep(0.2)
