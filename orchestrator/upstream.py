"""A lean HTTP/1.1 client for provider calls: JSON POST, keep-alive connections, one deadline.

Why not httpx here: on the 2-core reference machine httpx spent 0.85 ms of CPU per request at
concurrency 1 and 1.7 ms at 50 (httpcore's pool rescans every connection, polling each idle one,
on each request), more than the whole budget of the service. This client does only what the
cascade needs, on asyncio (uvloop under ``accute-fl serve``):

- ``post_json(url, body, headers, timeout)``: one POST with a JSON body, the whole exchange
  (connecting, writing, reading) under ``timeout``; the reply is read completely (Content-Length,
  chunked, or until the server closes) up to ``max_response_bytes``, gzip/deflate decoded.
- ``open_stream(url, body, headers, timeout)``: the same POST for a streamed reply; returns once
  the response head arrived, then ``chunks()`` yields the body as it arrives (same size limit; a
  stream must not be compressed) and ``aclose()`` ends the exchange, reusing the connection only
  if the body was read to its end.
- Connections are kept per origin (scheme, host, port), reused last-in first-out, and dropped
  when the server closed them, sent unexpected bytes, or they sat idle for ``keepalive_expiry_s``.
  A connection is reused only after a complete exchange; any error, timeout or cancellation
  closes it. At most ``max_connections`` requests are in flight at once.
- https uses the certifi CA bundle (as httpx does) unless an ``ssl_context`` is given; there is
  no proxy support (the service never used the environment's proxies) and no redirects.
- Header names and values with CR or LF are refused before anything is sent (a key cannot
  inject headers).

Failures raise ``UpstreamTimeout`` (deadline) or ``UpstreamError`` (connection refused or reset,
TLS failure, an answer that is not HTTP/1.x, a reply over the size limit).

``HttpxUpstream`` is the same interface over httpx (``ACCUTE_UPSTREAM_CLIENT=httpx``): slower, but
with httpx's HTTP stack for deployments that want it (e.g. an egress proxy from ``HTTPS_PROXY``).
``make_upstream`` picks one from the settings; tests/orchestrator/test_upstream.py runs the shared
behaviour against both.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from orchestrator.egress import EgressPolicy

MAX_HEAD_BYTES = 64 * 1024
USER_AGENT = "accute-fl/0.1"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UpstreamError(Exception):
    """The provider could not be reached, or its answer is not a readable HTTP/1.x response."""


class UpstreamTimeout(UpstreamError):
    """The exchange did not finish within its timeout."""


class UpstreamTooLarge(UpstreamError):
    """The reply (after decompression) is over ``max_response_bytes``: not worth retrying."""


class EgressDenied(UpstreamError):
    """The egress policy refused the provider's address (nothing was sent)."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    """Lowercased names; repeated headers joined with ", "."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    host_header: str
    guarded: bool = True
    """Under the egress policy: guarded and exempt (fallback) connections are never shared."""


@dataclass(frozen=True)
class _Target:
    origin: _Origin
    path: str


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: bytes arrive in ``buffer``; readers wait for more."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost = False
        self.reset = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None

    # -- protocol callbacks ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reset = exc is not None  # a reset or a read error, not an orderly close
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- use -----------------------------------------------------------------------------------------
    def reusable(self, now: float, expiry: float) -> bool:
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and not self.eof
            and not self.lost
            and not self.buffer
            and now - self.idle_since < expiry
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def _more(self) -> None:
        if self.eof or self.lost:
            raise UpstreamError("the server closed the connection")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_until(self, separator: bytes, limit: int) -> bytes:
        start = 0
        while True:
            at = self.buffer.find(separator, start)
            if at >= 0:
                end = at + len(separator)
                chunk = bytes(self.buffer[:end])
                del self.buffer[:end]
                return chunk
            if len(self.buffer) > limit:
                raise UpstreamError("the response head is too long")
            start = max(len(self.buffer) - len(separator) + 1, 0)
            await self._more()

    async def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await self._more()
        chunk = bytes(self.buffer[:count])
        del self.buffer[:count]
        return chunk

    async def read_some(self) -> bytes:
        """What has arrived (waiting for something); b"" once the server closed the connection."""
        while not self.buffer:
            if self.reset:
                raise UpstreamError("the server reset the connection")
            if self.eof or self.lost:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = bytes(self.buffer)
        self.buffer.clear()
        return chunk

    async def read_to_eof(self, limit: int) -> bytes:
        while not (self.eof or self.lost):
            if len(self.buffer) > limit:
                raise UpstreamTooLarge("the response is larger than the limit")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self.buffer) > limit:
            raise UpstreamTooLarge("the response is larger than the limit")
        if self.reset:
            raise UpstreamError("the server reset the connection")
        chunk = bytes(self.buffer)
        self.buffer.clear()
        return chunk


def _check_header(name: str, value: str) -> None:
    if any(c in name or c in value for c in "\r\n\0") or not name or ":" in name:
        raise UpstreamError("a request header name or value is not valid")


#: Output produced per step of decompression; the loop gets control back between steps.
DECODE_STEP = 1 << 20


class _Decoder:
    """Incremental gzip/deflate decoding that never holds more than ``limit`` decoded bytes.

    ``zlib.decompress`` of a whole body would unpack a 0.5 MB bomb to 500 MB before any check;
    here each step produces at most ``DECODE_STEP`` bytes (``max_length``) and the total is checked
    after each, so a bomb stops at ``limit`` + one step.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        encoding = encoding.strip().lower()
        self.limit = limit
        self.out = bytearray()
        self._raw_deflate = False
        if encoding in ("gzip", "x-gzip"):
            self._z: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj()
        else:  # identity, or an encoding we did not ask for (the JSON parse will refuse it)
            self._z = None
        self.encoding = encoding

    def steps(self, data: bytes) -> Any:
        """Feed ``data``; a generator that yields after each step (so callers can yield too)."""
        if self._z is None:
            self.out += data
            self._check()
            return
        pending = data
        while pending:
            try:
                chunk = self._z.decompress(pending, DECODE_STEP)
            except zlib.error:
                if self.encoding == "deflate" and not self._raw_deflate and not self.out:
                    # Some servers send raw deflate (no zlib header): start again that way.
                    self._raw_deflate = True
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise UpstreamError(f"the {self.encoding} response body does not decode") from None
            self.out += chunk
            self._check()
            pending = self._z.unconsumed_tail
            yield

    def finish(self) -> bytes:
        if self._z is not None:
            try:
                self.out += self._z.flush(DECODE_STEP)
            except zlib.error:
                raise UpstreamError(f"the {self.encoding} response body does not decode") from None
            self._check()
        return bytes(self.out)

    def _check(self) -> None:
        if len(self.out) > self.limit:
            raise UpstreamTooLarge("the response is larger than the limit")


async def _decode(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded, at most ``limit`` bytes, giving the loop back between 1 MiB steps."""
    if not encoding or encoding.strip().lower() == "identity":
        if len(body) > limit:
            raise UpstreamTooLarge("the response is larger than the limit")
        return body  # the common case: no copy
    decoder = _Decoder(encoding, limit)
    for _ in decoder.steps(body):
        await asyncio.sleep(0)
    return decoder.finish()


class UpstreamStream(Protocol):
    """A response whose head has arrived; its body is read as it comes (server-sent events)."""

    status: int
    headers: dict[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (at most ``max_response_bytes`` in all)."""
        ...

    async def read_all(self) -> bytes:
        """The rest of the body (an error reply's), bounded like ``post_json``'s."""
        ...

    async def aclose(self) -> None:
        """Close the exchange (a connection not read to its end is dropped, not reused)."""
        ...


class Upstream(Protocol):
    """What the cascade needs from an HTTP client."""

    async def post_json(
        self, url: str, body: Any, headers: Mapping[str, str], timeout: float, *, guarded: bool = True
    ) -> UpstreamResponse: ...

    async def open_stream(
        self, url: str, body: Any, headers: Mapping[str, str], timeout: float, *, guarded: bool = True
    ) -> UpstreamStream:
        """POST ``body``; returns once the response head arrived (within ``timeout``)."""
        ...

    async def aclose(self) -> None: ...


async def resolve_checked(policy: EgressPolicy | None, host: str, port: int) -> str:
    """The address to connect to for ``host``, after the egress policy saw every address it has.

    Resolved here, once, and the connection goes to the returned address: a name cannot resolve
    to a public address for the check and to an internal one for the connect (DNS rebinding).
    Every address the name has must be allowed (one internal answer refuses the name).
    """
    if policy is None or policy.allowed_host(host):
        return host
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UpstreamError("cannot resolve the provider's host") from None
    addresses = []
    for info in infos:
        try:
            addresses.append(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        except ValueError:
            continue
    if not addresses:
        raise UpstreamError("cannot resolve the provider's host")
    for address in addresses:
        if not policy.allowed_address(address):
            raise EgressDenied(
                f"the provider's host resolves to an internal address ({address}); "
                "the operator may allow it with ACCUTE_EGRESS_ALLOW"
            )
    return str(addresses[0])


class _Bulkhead:
    """Slots for requests in flight: per origin, for all tenant providers, and a reserved pool.

    Tenant calls (``guarded``) take a slot of their origin (``max_per_origin``) and one of the
    shared tenant pool (``max_connections``); the platform fallback (not guarded) has its own pool
    (``reserved``), so tenants hanging on slow providers can never starve the fallback, and one
    slow origin can never hold every slot.
    """

    def __init__(self, max_connections: int, max_per_origin: int, reserved: int) -> None:
        self.max_per_origin = max_per_origin
        self._tenants = asyncio.Semaphore(max_connections)
        self._reserved = asyncio.Semaphore(reserved)
        self._origins: dict[Any, asyncio.Semaphore] = {}

    async def __call__(self, origin: Any, guarded: bool, work: Any) -> Any:
        held = await self.enter(origin, guarded)
        try:
            return await work()
        finally:
            for slot in held:
                slot.release()

    async def enter(self, origin: Any, guarded: bool) -> tuple[asyncio.Semaphore, ...]:
        """Take the slots of one request; the caller releases each of them when it is done."""
        if not guarded:
            await self._reserved.acquire()
            return (self._reserved,)
        slot = self._origins.get(origin)
        if slot is None:
            if len(self._origins) >= 4096:  # forget origins nobody is using
                self._origins = {k: v for k, v in self._origins.items() if v.locked() or v._waiters}
            slot = self._origins[origin] = asyncio.Semaphore(self.max_per_origin)
        await slot.acquire()
        try:
            await self._tenants.acquire()
        except BaseException:
            slot.release()
            raise
        return (slot, self._tenants)


class UpstreamClient:
    def __init__(
        self,
        *,
        max_connections: int = 500,
        max_per_origin: int = 100,
        reserved_connections: int = 100,
        max_idle_per_origin: int = 200,
        keepalive_expiry_s: float = 4.0,
        max_response_bytes: int = 4 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.max_idle_per_origin = max_idle_per_origin
        self.keepalive_expiry_s = keepalive_expiry_s
        self.max_response_bytes = max_response_bytes
        self._ssl = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._bulkhead = _Bulkhead(max_connections, max_per_origin, reserved_connections)
        self.egress = egress
        self._open: set[_Connection] = set()
        self._closed = False

    # -- public ------------------------------------------------------------------------------------
    async def post_json(
        self, url: str, body: Any, headers: Mapping[str, str], timeout: float, *, guarded: bool = True
    ) -> UpstreamResponse:
        """POST ``body`` as JSON to ``url``; the complete response (any status).

        ``guarded``: the egress policy applies (tenant providers); False for the operator's fallback.
        """
        if self._closed:
            raise UpstreamError("the client is closed")
        target = self._target(url, guarded)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        request = self._request_bytes(target, payload, headers)
        try:
            async with asyncio.timeout(timeout):
                return await self._bulkhead(  # type: ignore[no-any-return]
                    target.origin, guarded, lambda: self._exchange(target.origin, request)
                )
        except TimeoutError:
            raise UpstreamTimeout(f"no complete response within {timeout:.3g}s") from None

    async def aclose(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    # -- request -----------------------------------------------------------------------------------
    def _target(self, url: str, guarded: bool = True) -> _Target:
        key = url if guarded else f"exempt {url}"
        target = self._targets.get(key)
        if target is not None:
            return target
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise UpstreamError("the provider URL must be http:// or https:// with a host")
        try:
            port = parts.port or _DEFAULT_PORTS[scheme]
            ascii_host = parts.hostname.encode("idna").decode("ascii")
        except (ValueError, UnicodeError):
            raise UpstreamError("the provider URL has an invalid host or port") from None
        shown = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        host_header = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in path for c in " \r\n\0"):
            raise UpstreamError("the provider URL path is not valid")
        target = _Target(_Origin(scheme, parts.hostname, port, host_header, guarded), path)
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[key] = target
        return target

    @staticmethod
    def _request_bytes(
        target: _Target, payload: bytes, headers: Mapping[str, str], stream: bool = False
    ) -> bytes:
        lines = [
            f"POST {target.path} HTTP/1.1",
            f"host: {target.origin.host_header}",
            f"user-agent: {USER_AGENT}",
            # A stream is read as it arrives: no compression to undo chunk by chunk.
            "accept: text/event-stream" if stream else "accept: application/json",
            "accept-encoding: identity" if stream else "accept-encoding: gzip, deflate",
        ]
        has_type = False
        for name, value in headers.items():
            _check_header(name, value)
            lowered = name.lower()
            if lowered in ("host", "content-length", "transfer-encoding", "connection"):
                continue
            has_type = has_type or lowered == "content-type"
            lines.append(f"{name}: {value}")
        if not has_type:
            lines.append("content-type: application/json")
        lines.append(f"content-length: {len(payload)}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise UpstreamError("a request header name or value is not valid") from None
        return head + payload

    # -- connections -------------------------------------------------------------------------------
    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            context = self._ssl or _default_ssl_context()
        address = await resolve_checked(self.egress if origin.guarded else None, origin.host, origin.port)
        try:
            _, connection = await loop.create_connection(
                _Connection,
                address,
                origin.port,
                ssl=context,
                server_hostname=origin.host if context is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"cannot connect: {type(exc).__name__}") from None
        self._open.add(connection)
        return connection

    def _checkout(self, origin: _Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        now = time.monotonic()
        while stack:
            connection = stack.pop()
            if connection.reusable(now, self.keepalive_expiry_s):
                return connection
            self._discard(connection)
        return None

    def _checkin(self, origin: _Origin, connection: _Connection) -> None:
        now = time.monotonic()
        connection.idle_since = now
        stack = self._idle.setdefault(origin, [])
        # The bottom of the stack is the longest idle: drop what expired there.
        while stack and not stack[0].reusable(now, self.keepalive_expiry_s):
            self._discard(stack.pop(0))
        if self._closed or len(stack) >= self.max_idle_per_origin:
            self._discard(connection)
        else:
            stack.append(connection)

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def _exchange(self, origin: _Origin, request: bytes) -> UpstreamResponse:
        connection = self._checkout(origin) or await self._connect(origin)
        reusable = False
        try:
            assert connection.transport is not None
            connection.transport.write(request)
            response, reusable = await self._read_response(connection)
            return response
        finally:
            if reusable and not connection.buffer:
                self._checkin(origin, connection)
            else:
                self._discard(connection)

    async def _read_response(self, connection: _Connection) -> tuple[UpstreamResponse, bool]:
        status, version, headers = await _read_head(connection)
        body, keep_alive = await _read_body(connection, status, version, headers, self.max_response_bytes)
        return UpstreamResponse(status, headers, body), keep_alive

    async def open_stream(
        self, url: str, body: Any, headers: Mapping[str, str], timeout: float, *, guarded: bool = True
    ) -> UpstreamStream:
        """POST ``body`` as JSON and return once the response head arrived (within ``timeout``).

        The exchange keeps its bulkhead slots and its connection until ``aclose``; the body is
        then read with ``chunks`` (as it arrives) or ``read_all``.
        """
        if self._closed:
            raise UpstreamError("the client is closed")
        target = self._target(url, guarded)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        request = self._request_bytes(target, payload, headers, stream=True)
        held: tuple[asyncio.Semaphore, ...] = ()
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                held = await self._bulkhead.enter(target.origin, guarded)
                connection = self._checkout(target.origin) or await self._connect(target.origin)
                assert connection.transport is not None
                connection.transport.write(request)
                status, version, head = await _read_head(connection)
        except BaseException as exc:
            if connection is not None:
                self._discard(connection)
            for slot in held:
                slot.release()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"no response head within {timeout:.3g}s") from None
            raise
        return _BuiltinStream(self, target.origin, connection, held, status, version, head)


class _BuiltinStream:
    """``UpstreamStream`` of ``UpstreamClient``: the body read straight from the connection."""

    def __init__(
        self,
        client: UpstreamClient,
        origin: _Origin,
        connection: _Connection,
        held: tuple[asyncio.Semaphore, ...],
        status: int,
        version: str,
        headers: dict[str, str],
    ) -> None:
        self.status, self.headers = status, headers
        self._client, self._origin, self._connection, self._held = client, origin, connection, held
        self._version = version
        self._reusable = False
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        headers, connection, limit = self.headers, self._connection, self._client.max_response_bytes
        if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            raise UpstreamError("the provider compressed a stream it was asked to send plain")
        received = 0
        if self.status in (101, 204, 304):
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            async for piece in _iter_chunked(connection, limit):
                yield piece
            self._reusable = _keep_alive(self._version, headers)
            return
        length = _content_length(headers) if "content-length" in headers else None
        if length is not None and length > limit:
            raise UpstreamTooLarge("the response is larger than the limit")
        while length is None or received < length:
            data = await connection.read_some()
            if not data:
                if length is not None:
                    raise UpstreamError("the server closed the connection before the end of the body")
                return
            if length is not None and received + len(data) > length:
                raise UpstreamError("the server sent more than its Content-Length")
            received += len(data)
            if received > limit:
                raise UpstreamTooLarge("the response is larger than the limit")
            yield data
        self._reusable = _keep_alive(self._version, headers)

    async def read_all(self) -> bytes:
        body, self._reusable = await _read_body(
            self._connection, self.status, self._version, self.headers, self._client.max_response_bytes
        )
        return body

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reusable and not self._connection.buffer:
            self._client._checkin(self._origin, self._connection)
        else:
            self._client._discard(self._connection)
        for slot in self._held:
            slot.release()


def _keep_alive(version: str, headers: Mapping[str, str]) -> bool:
    connection_header = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection_header
    return "close" not in connection_header


def _content_length(headers: Mapping[str, str]) -> int:
    try:
        lengths = {int(v.strip()) for v in headers["content-length"].split(",")}
    except ValueError:
        raise UpstreamError("the response has an invalid Content-Length") from None
    if len(lengths) != 1 or (length := lengths.pop()) < 0:
        raise UpstreamError("the response has an invalid Content-Length")
    return length


async def _read_head(connection: _Connection) -> tuple[int, str, dict[str, str]]:
    while True:
        head = await connection.read_until(b"\r\n\r\n", MAX_HEAD_BYTES)
        status, version, headers = _parse_head(head)
        if 100 <= status < 200 and status != 101:
            continue  # informational (100 Continue, 103 Early Hints): the real answer follows
        return status, version, headers


async def _read_body(
    connection: _Connection, status: int, version: str, headers: dict[str, str], limit: int
) -> tuple[bytes, bool]:
    """The whole body, decoded and at most ``limit`` bytes; and whether the connection is reusable."""
    keep_alive = _keep_alive(version, headers)
    if status in (204, 304) or status == 101:
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(connection, limit)
    elif "content-length" in headers:
        length = _content_length(headers)
        if length > limit:
            raise UpstreamTooLarge("the response is larger than the limit")
        body = await connection.read_exactly(length)
    else:
        body = await connection.read_to_eof(limit)
        keep_alive = False
    if status == 101:
        keep_alive = False
    body = await _decode(body, headers.get("content-encoding", ""), limit)
    return body, keep_alive


async def _read_chunked(connection: _Connection, limit: int) -> bytes:
    return b"".join([part async for part in _iter_chunked(connection, limit)])


async def _iter_chunked(connection: _Connection, limit: int) -> AsyncIterator[bytes]:
    """The chunks of a chunked body as they arrive (the total at most ``limit``)."""
    total = 0
    while True:
        line = await connection.read_until(b"\r\n", MAX_HEAD_BYTES)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise UpstreamError("the response has an invalid chunk size") from None
        if size < 0:
            raise UpstreamError("the response has an invalid chunk size")
        if size == 0:
            # Trailers, up to the empty line.
            while await connection.read_until(b"\r\n", MAX_HEAD_BYTES) != b"\r\n":
                pass
            return
        total += size
        if total > limit:
            raise UpstreamTooLarge("the response is larger than the limit")
        chunk = await connection.read_exactly(size + 2)
        if not chunk.endswith(b"\r\n"):
            raise UpstreamError("the response has a malformed chunk")
        yield chunk[:-2]


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    if b"\0" in head:  # no field may hold NUL (RFC 9110 5.5); h11 refuses it too
        raise UpstreamError("the response head contains NUL")
    try:
        text = head.decode("latin-1")
        status_line, _, rest = text.partition("\r\n")
        version, code, *_ = status_line.split(" ", 2)
        if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise ValueError(status_line)
        status = int(code)
    except (ValueError, UnicodeDecodeError):
        raise UpstreamError("the answer is not an HTTP/1.x response") from None
    headers: dict[str, str] = {}
    for line in rest.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise UpstreamError("the response has a malformed header")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return status, version, headers


_SSL_CONTEXT: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        try:
            import certifi

            _SSL_CONTEXT = ssl.create_default_context(cafile=certifi.where())
        except ImportError:  # pragma: no cover - certifi comes with httpx
            _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


class _GuardedBackend:
    """An httpcore network backend that connects only to addresses the egress policy allows."""

    def __init__(self, inner: Any, policy: EgressPolicy) -> None:
        self.inner, self.policy = inner, policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        address = await resolve_checked(self.policy, host, port)
        return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> Any:
        raise EgressDenied("unix sockets are not provider endpoints")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class HttpxUpstream:
    """``Upstream`` over httpx (HTTP/1.1 keep-alive pool; environment proxies when ``trust_env``).

    Two clients: tenant calls go through one whose connections are made by ``_GuardedBackend``
    (the egress policy on the resolved address; TLS still verifies the name); the fallback through
    one without it. With a proxy from the environment the backend checks the proxy's address, not
    the provider's: the proxy must enforce egress then.
    """

    def __init__(
        self,
        *,
        max_connections: int = 500,
        max_per_origin: int = 100,
        reserved_connections: int = 100,
        max_idle_per_origin: int = 200,
        max_response_bytes: int = 4 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = False,
        egress: EgressPolicy | None = None,
    ) -> None:
        import httpx

        self._httpx = httpx
        self.max_response_bytes = max_response_bytes
        self._bulkhead = _Bulkhead(max_connections, max_per_origin, reserved_connections)

        def client(limit: int, policy: EgressPolicy | None) -> Any:
            transport = httpx.AsyncHTTPTransport(
                verify=ssl_context or _default_ssl_context(),
                trust_env=trust_env,
                limits=httpx.Limits(
                    max_connections=limit, max_keepalive_connections=min(max_idle_per_origin, limit)
                ),
            )
            if policy is not None:
                pool = transport._pool
                pool._network_backend = _GuardedBackend(pool._network_backend, policy)  # type: ignore[assignment]
            return httpx.AsyncClient(
                transport=transport,
                trust_env=trust_env,
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
            )

        self._client = client(max_connections, egress)
        self._exempt = client(reserved_connections, None)

    async def post_json(
        self, url: str, body: Any, headers: Mapping[str, str], timeout: float, *, guarded: bool = True
    ) -> UpstreamResponse:
        httpx = self._httpx
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname, parts.port)
        client = self._client if guarded else self._exempt
        for name, value in headers.items():
            _check_header(name, value)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        sent = {"content-type": "application/json", "accept-encoding": "gzip, deflate", **headers}
        limit = self.max_response_bytes

        async def exchange() -> UpstreamResponse:
            async with client.stream("POST", url, content=payload, headers=sent) as response:
                # Raw bytes through our bounded decoder: httpx's own decoding would unpack
                # each network chunk whole (a 64 KiB chunk of a bomb is 64 MiB).
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise UpstreamTooLarge("the response is larger than the limit")
                decoder = _Decoder(response.headers.get("content-encoding", ""), limit)
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received > limit:
                        raise UpstreamTooLarge("the response is larger than the limit")
                    for _ in decoder.steps(chunk):
                        await asyncio.sleep(0)
                names = {k.lower(): v for k, v in response.headers.items()}
                return UpstreamResponse(response.status_code, names, decoder.finish())

        try:
            async with asyncio.timeout(timeout):
                return await self._bulkhead(origin, guarded, exchange)  # type: ignore[no-any-return]
        except TimeoutError:
            raise UpstreamTimeout(f"no complete response within {timeout:.3g}s") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"no complete response within {timeout:.3g}s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise UpstreamError(f"{type(exc).__name__} talking to the provider") from None

    async def open_stream(
        self, url: str, body: Any, headers: Mapping[str, str], timeout: float, *, guarded: bool = True
    ) -> UpstreamStream:
        httpx = self._httpx
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname, parts.port)
        client = self._client if guarded else self._exempt
        for name, value in headers.items():
            _check_header(name, value)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        sent = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "accept-encoding": "identity",
            **headers,
        }
        held: tuple[asyncio.Semaphore, ...] = ()
        context: Any = None
        try:
            async with asyncio.timeout(timeout):
                held = await self._bulkhead.enter(origin, guarded)
                context = client.stream("POST", url, content=payload, headers=sent)
                response = await context.__aenter__()
        except BaseException as exc:
            if context is not None:
                await context.__aexit__(None, None, None)
            for slot in held:
                slot.release()
            if isinstance(exc, TimeoutError | httpx.TimeoutException):
                raise UpstreamTimeout(f"no response head within {timeout:.3g}s") from None
            if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
                raise UpstreamError(f"{type(exc).__name__} talking to the provider") from None
            raise
        return _HttpxStream(self, context, response, held)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._exempt.aclose()


class _HttpxStream:
    """``UpstreamStream`` of ``HttpxUpstream``: raw bytes of an httpx streaming response."""

    def __init__(
        self, owner: HttpxUpstream, context: Any, response: Any, held: tuple[asyncio.Semaphore, ...]
    ) -> None:
        self._owner, self._context, self._response, self._held = owner, context, response, held
        self.status = int(response.status_code)
        self.headers = {k.lower(): v for k, v in response.headers.items()}
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        limit = self._owner.max_response_bytes
        if self.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            raise UpstreamError("the provider compressed a stream it was asked to send plain")
        received = 0
        try:
            async for chunk in self._response.aiter_raw():
                received += len(chunk)
                if received > limit:
                    raise UpstreamTooLarge("the response is larger than the limit")
                yield chunk
        except self._owner._httpx.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__} talking to the provider") from None

    async def read_all(self) -> bytes:
        limit = self._owner.max_response_bytes
        decoder = _Decoder(self.headers.get("content-encoding", ""), limit)
        received = 0
        try:
            async for chunk in self._response.aiter_raw():
                received += len(chunk)
                if received > limit:
                    raise UpstreamTooLarge("the response is larger than the limit")
                for _ in decoder.steps(chunk):
                    await asyncio.sleep(0)
        except self._owner._httpx.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__} talking to the provider") from None
        return decoder.finish()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._context.__aexit__(None, None, None)
        finally:
            for slot in self._held:
                slot.release()


def make_upstream(kind: str, **options: Any) -> Upstream:
    """The client ``ACCUTE_UPSTREAM_CLIENT`` names: ``builtin`` (default) or ``httpx``."""
    if kind == "httpx":
        return HttpxUpstream(**options)
    return UpstreamClient(**options)
