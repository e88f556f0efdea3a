"""The cascade against hostile tenant providers: every bad reply is a provider error with its
accounting rows, the fallback answers, and the service never answers 500."""

from __future__ import annotations

import gzip
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from schema.db import transaction
from schema.models import FallbackBilling, LlmUsageLog
from tests.orchestrator.conftest import Service
from tests.orchestrator.fakes import http_reply, openai_body, running_hostile


def _rows(service: Service, org: Any) -> list[LlmUsageLog]:
    with transaction(service.engine) as session:
        return list(
            session.scalars(
                sa.select(LlmUsageLog)
                .where(LlmUsageLog.organization_id == org)
                .order_by(LlmUsageLog.created_at, LlmUsageLog.is_fallback)
            )
        )


def _billed(service: Service, org: Any) -> int:
    with transaction(service.engine) as session:
        row = session.scalars(
            sa.select(FallbackBilling).where(FallbackBilling.organization_id == org)
        ).first()
        return 0 if row is None else row.total_fallback_requests


def _sender(raw: bytes) -> Callable[[bytes, bytes, socket.socket], None]:
    def reply(head: bytes, body: bytes, conn: socket.socket) -> None:
        conn.sendall(raw)

    return reply


HOSTILE = {
    "retry-after-soon": (http_reply(b"{}", "503 Busy", {"retry-after": "soon"}), "http_503", 3),
    "retry-after-nan": (http_reply(b"{}", "429 Slow down", {"retry-after": "nan"}), "http_429", 3),
    "retry-after-date-9999": (
        http_reply(b"{}", "503 Busy", {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}),
        "http_503",
        1,
    ),
    "infinity-tokens": (http_reply(openai_body(prompt="Infinity")), "bad_response", 1),
    "nan-tokens": (http_reply(openai_body(completion="NaN")), "bad_response", 1),
    "huge-tokens": (http_reply(openai_body(prompt="3e9")), "bad_response", 1),
    "negative-tokens": (http_reply(openai_body(completion="-5")), "bad_response", 1),
    "nul-content": (http_reply(openai_body(content="a\x00b")), "bad_response", 1),
    "deep-nesting": (http_reply(b"[" * 100_000 + b"]" * 100_000), "bad_response", 1),
    "not-json": (http_reply(b"\xff\xfe not json"), "bad_response", 1),
    "plus-status": (b"HTTP/1.1 +20 OK\r\ncontent-length: 2\r\n\r\n{}", "connect_error", 3),
    "gzip-bomb": (
        http_reply(gzip.compress(b" " * (200 * 1024 * 1024), 9), headers={"content-encoding": "gzip"}),
        "response_too_large",
        1,
    ),
}


@pytest.mark.parametrize("client", ["builtin", "httpx"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_reply_is_a_provider_error_with_rows_and_the_fallback_answers(
    service_factory: Callable[..., Service], case: str, client: str
) -> None:
    # Prepare: the same hostile replies against each HTTP client option.
    raw, code, attempts = HOSTILE[case]
    with running_hostile(_sender(raw)) as hostile:
        service = service_factory(
            provider_max_response_bytes=1 << 20, retry_backoff_max_s=0.5, upstream_client=client
        )
        org = service.org()
        service.add_config(org, provider="custom", api_endpoint=hostile.url)

        # Execute
        started = time.monotonic()
        response = service.chat(org)
        elapsed = time.monotonic() - started

        # Assert
        assert response.status_code == 200, response.text
        assert response.json()["is_fallback"] is True
        rows = _rows(service, org)
        tenant = [r for r in rows if not r.is_fallback]
        assert [r.error_code for r in tenant] == [code] * attempts
        assert all(r.status == "error" and r.input_tokens == r.output_tokens == 0 for r in tenant)
        assert hostile.requests == attempts
        assert _billed(service, org) == 1
        assert elapsed < 5


def test_a_gzip_bomb_does_not_freeze_the_service(service_factory: Callable[..., Service]) -> None:
    # Prepare: a bomb that unpacks to 500 MiB, answered while /healthz is polled from another thread.
    import threading

    bomb = http_reply(gzip.compress(b"0" * (500 * 1024 * 1024), 9), headers={"content-encoding": "gzip"})
    with running_hostile(_sender(bomb)) as hostile:
        service = service_factory()
        org = service.org()
        service.add_config(org, provider="custom", api_endpoint=hostile.url)
        worst = [0.0]
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                started = time.monotonic()
                service.client.get("/healthz")
                worst[0] = max(worst[0], time.monotonic() - started)
                time.sleep(0.01)

        # Execute
        poller = threading.Thread(target=poll)
        poller.start()
        response = service.chat(org)
        done.set()
        poller.join()

        # Assert
        assert response.status_code == 200 and response.json()["is_fallback"] is True
        assert worst[0] < 0.5, f"/healthz waited {worst[0]:.2f}s"
        assert [r.error_code for r in _rows(service, org) if not r.is_fallback] == ["response_too_large"]
