"""uvicorn's httptools protocol with a hard cap on request heads (``accute-fl serve``).

uvicorn's httptools parser has no limit of its own on the request line and headers: a 64 MiB
``Authorization`` header was read whole before the application (and ``orchestrator.edge``) saw
it. This protocol counts the bytes of a request head as they arrive and answers 431 and closes
the connection once they pass ``MAX_HEAD_BYTES``, so at most one read beyond it is ever held.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The server's hard cap on a request head (request line + headers), above any configured limit.
MAX_HEAD_BYTES = 64 * 1024

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
