"""Size limits at the edge, before authentication: 431 for oversize heads, 413 for oversize bodies.

Without them one unauthenticated 100 MB POST grew the process by 300 MB, and a 64 MiB
``Authorization`` header was accepted. Two layers:

- ``RequestLimits`` (pure ASGI middleware, outermost): a request whose request line and headers
  exceed ``max_request_header_bytes`` gets 431; a declared ``Content-Length`` over
  ``max_request_body_bytes`` gets 413 at once, nothing read; a body without a length (chunked) is
  counted as it arrives and cut with 413 when it passes the limit, so at most the limit is ever
  held. Nothing of the body is buffered here.
- ``LimitedHttpToolsProtocol`` (the HTTP protocol ``accute-fl serve`` runs): the server itself
  stops reading a request head past ``MAX_HEAD_BYTES`` and answers 431, so the headers never
  reach memory as a whole (uvicorn's httptools parser has no limit of its own).
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The server's hard cap on a request head (request line + headers), above any configured limit.
MAX_HEAD_BYTES = 64 * 1024


class _BodyTooLarge(Exception):
    pass


def _error(status: int, code: str, message: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": code, "message": message}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class RequestLimits:
    def __init__(self, app: Any, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_header = max_header_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        declared: int | None = None
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if size > self.max_header:
            await self._reply(send, 431, "headers_too_large", f"request headers over {self.max_header} bytes")
            return
        if declared is not None and declared > self.max_body:
            await self._reply(send, 413, "body_too_large", f"request body over {self.max_body} bytes")
            return
        received = 0
        started = False

        async def counted_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await self._reply(send, 413, "body_too_large", f"request body over {self.max_body} bytes")

    @staticmethod
    async def _reply(send: Any, status: int, code: str, message: str) -> None:
        start, body = _error(status, code, message)
        await send(start)
        await send(body)


_HEAD_BODY = b'{"error": "headers_too_large", "message": "request head too large"}'
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_HEAD_BODY)).encode() + b"\r\n\r\n" + _HEAD_BODY
)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that refuses a request head over ``MAX_HEAD_BYTES`` (431)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self.transport.write(_HEAD_TOO_LARGE)
            self.transport.close()
