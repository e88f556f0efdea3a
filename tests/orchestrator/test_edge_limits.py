"""A hostile client on loopback: huge bodies and headers are refused before authentication,
without the server reading (or holding) them."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from orchestrator.service import create_app
from schema import directory
from schema.db import transaction
from tests.orchestrator.conftest import make_settings
from tests.orchestrator.fakes import running_app

TOKEN: dict[str, str] = {}


@pytest.fixture
def base_url(engine: Engine, tmp_path: Path) -> Iterator[tuple[str, int]]:
    settings = make_settings(tmp_path, None, max_request_body_bytes=64 * 1024)
    app = create_app(settings, engine)
    with transaction(engine) as session:
        org = directory.create_organization(session, f"firm-{uuid.uuid4().hex[:8]}", "pay_as_you_go").id
    TOKEN["org"] = str(org)
    TOKEN["token"] = app.state.services.tokens.issue(role="org_user", organization_id=org)
    with running_app(app) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def _status(sock: socket.socket, timeout: float = 3.0) -> int:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else -1


def _path() -> str:
    return f"/v1/orgs/{uuid.uuid4()}/agents/luca/chat"


def test_a_declared_huge_body_is_refused_before_it_is_sent(base_url: tuple[str, int]) -> None:
    # Prepare: announce 100 MB, send none of it, no credentials.
    with socket.create_connection(base_url) as sock:
        started = time.monotonic()
        sock.sendall(
            f"POST {_path()} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {100 * 1024 * 1024}\r\n\r\n".encode()
        )
        # Execute
        status = _status(sock)
    # Assert: answered at once (the server did not wait for the body, nor ask for a token).
    assert status == 413
    assert time.monotonic() - started < 1.5


def test_a_chunked_body_is_cut_at_the_limit(base_url: tuple[str, int]) -> None:
    # Prepare: an authenticated chat (an unauthenticated one is refused before its body is read).
    path = f"/v1/orgs/{TOKEN['org']}/agents/luca/chat"
    with socket.create_connection(base_url) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN['token']}\r\n"
            "transfer-encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"x" * 16384
        sent = 0
        try:
            for _ in range(640):  # up to 10 MiB
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: what we want
        status = _status(sock)
    assert status == 413
    # The server stopped reading and closed before the 10 MiB were all sent. How much more than the
    # 64 KiB limit the client got out depends on the kernel's loopback buffers (autotuned up to
    # tcp_rmem's maximum, 32 MiB here), not on the server: 4 MiB was exceeded under load.
    assert sent < 640 * len(chunk)


def test_a_header_over_the_configured_limit_gets_431(base_url: tuple[str, int]) -> None:
    with socket.create_connection(base_url) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {'a' * 40_000}\r\n\r\n".encode())
        assert _status(sock) == 431


def test_a_64_mib_authorization_header_is_cut_by_the_server(base_url: tuple[str, int]) -> None:
    # Execute: stream a 64 MiB header; the server answers 431 and closes long before the end.
    with socket.create_connection(base_url) as sock:
        sock.sendall(f"POST {_path()} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ".encode())
        piece = b"A" * 65536
        sent = 0
        try:
            for _ in range(1024):
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            pass
        status = _status(sock)
    # Assert
    assert status == 431
    assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes of header"


def test_small_requests_still_work(base_url: tuple[str, int]) -> None:
    with socket.create_connection(base_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _status(sock) == 200
    with socket.create_connection(base_url) as sock:
        body = b'{"message": "hi"}'
        sock.sendall(
            f"POST {_path()} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
        )
        assert _status(sock) == 401  # reached authentication
