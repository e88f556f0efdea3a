"""Size limits at the edge, before authentication: 431 for oversize heads, 413 for oversize bodies.

Without them one unauthenticated 100 MB POST grew the process by 300 MB, and a 64 MiB
``Authorization`` header was accepted. Two layers:

- ``RequestLimits`` (pure ASGI middleware, outermost): a request whose request line and headers
  exceed ``max_request_header_bytes`` gets 431; a declared ``Content-Length`` over
  ``max_request_body_bytes`` gets 413 at once, nothing read; a body without a length (chunked) is
  counted as it arrives and cut with 413 when it passes the limit, so at most the limit is ever
  held. Nothing of the body is buffered here.
- ``orchestrator.http_protocol.LimitedHttpToolsProtocol`` (what ``accute-fl serve`` runs): the server itself
  stops reading a request head past ``MAX_HEAD_BYTES`` and answers 431, so the headers never
  reach memory as a whole (uvicorn's httptools parser has no limit of its own).
"""

from __future__ import annotations

import json
from typing import Any


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
