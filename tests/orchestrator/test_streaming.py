"""Streaming through the OpenAI door: provider streams pass through as they arrive, exact usage at
the end, and a client that hangs up is accounted for what was generated (real servers on loopback)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator import accounting
from orchestrator.service import create_app
from schema import directory
from schema.db import transaction
from schema.models import FallbackBilling, LlmInflight, LlmRequest, LlmUsageLog
from tests.orchestrator.conftest import make_settings
from tests.orchestrator.fakes import StreamingProvider, running_app, running_streaming

CLIENTS = ["builtin", "httpx"]


@dataclass
class Door:
    base: str
    org: uuid.UUID
    user: str
    admin: str
    engine: Engine
    settings: Any

    def add_config(self, **fields: Any) -> None:
        body = {"display_name": "mine", "model_id": "m", "priority": 1, "api_key": "k", **fields}
        response = httpx.post(
            f"{self.base}/v1/orgs/{self.org}/llm-configs",
            json=body,
            headers={"Authorization": f"Bearer {self.admin}"},
            trust_env=False,
        )
        assert response.status_code == 201, response.text

    @contextmanager
    def stream(self, message: str = "what is the VAT rate", **headers: str) -> Iterator[httpx.Response]:
        body = {
            "model": "agent/luca",
            "messages": [{"role": "user", "content": message}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with (
            httpx.Client(timeout=30, trust_env=False) as client,
            client.stream(
                "POST",
                f"{self.base}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {self.user}", **headers},
            ) as response,
        ):
            yield response

    def usage_rows(self) -> list[LlmUsageLog]:
        with transaction(self.engine) as session:
            rows = list(session.scalars(sa.select(LlmUsageLog)))
            session.expunge_all()
            return rows


@pytest.fixture
def make_door(engine: Engine, tmp_path: Path) -> Iterator[Callable[..., Door]]:
    stack: list[Any] = []

    def build(fallback_url: str | None, **overrides: Any) -> Door:
        settings = make_settings(tmp_path, fallback_url, **overrides)
        app = create_app(settings, engine)
        with transaction(engine) as session:
            org = directory.create_organization(session, f"firm-{uuid.uuid4().hex[:8]}", "pay_as_you_go").id
        tokens = app.state.services.tokens
        context = running_app(app)
        base = context.__enter__()
        stack.append(context)
        user = tokens.issue(role="org_user", organization_id=org)
        admin = tokens.issue(role="org_admin", organization_id=org)
        return Door(base, org, user, admin, engine, settings)

    yield build
    for context in reversed(stack):
        context.__exit__(None, None, None)


def _events(response: httpx.Response) -> Iterator[tuple[float, Any]]:
    """(arrival time, event) for each ``data:`` line as it arrives; ``[DONE]`` as the string."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            yield time.monotonic(), data if data == "[DONE]" else json.loads(data)


def _content(event: Any) -> str:
    if not isinstance(event, dict) or not event.get("choices"):
        return ""
    return str(event["choices"][0]["delta"].get("content") or "")


def _wait_for(check: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("client", CLIENTS)
def test_a_tenant_stream_is_passed_through_as_it_arrives(make_door: Callable[..., Door], client: str) -> None:
    # Prepare: a tenant provider that trickles four pieces 0.4 s apart, then its usage.
    pieces = ["Hel", "lo ", "wor", "ld"]
    with running_streaming(
        StreamingProvider(pieces, gap_s=0.4, input_tokens=17, output_tokens=4)
    ) as provider:
        door = make_door(None, upstream_client=client)
        door.add_config(provider="openai", api_endpoint=provider.url)

        # Execute
        with door.stream() as response:
            events = list(_events(response))

    # Assert: each piece arrived on its own, as the provider sent it (not buffered to the end).
    content = [(at, _content(e)) for at, e in events if _content(e)]
    assert response.status_code == 200
    assert [text for _, text in content] == pieces
    assert content[-1][0] - content[0][0] >= 0.9  # three 0.4 s gaps seen by the client
    assert provider.requests[0]["stream"] is True
    assert provider.requests[0]["stream_options"] == {"include_usage": True}
    usage = [e["usage"] for _, e in events if isinstance(e, dict) and e.get("usage")]
    assert usage == [{"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21}]
    assert events[-1][1] == "[DONE]"
    rows = door.usage_rows()
    assert [(r.status, r.input_tokens, r.output_tokens, r.provider) for r in rows] == [
        ("success", 17, 4, "openai")
    ]


def test_an_anthropic_stream_is_passed_through_with_its_usage(make_door: Callable[..., Door]) -> None:
    # Prepare: an Anthropic-style provider whose reported output (9) differs from its delta count.
    pieces = ["Bon", "jour"]
    with running_streaming(
        StreamingProvider(pieces, gap_s=0.2, style="anthropic", input_tokens=12, output_tokens=9)
    ) as provider:
        door = make_door(None)
        door.add_config(provider="anthropic", api_endpoint=provider.url)

        # Execute
        with door.stream() as response:
            events = list(_events(response))

    # Assert: the text as sent, and the provider's own usage, exactly.
    assert [_content(e) for _, e in events if _content(e)] == pieces
    usage = [e["usage"] for _, e in events if isinstance(e, dict) and e.get("usage")]
    assert usage == [{"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}]
    assert [(r.status, r.input_tokens, r.output_tokens) for r in door.usage_rows()] == [("success", 12, 9)]


def test_a_streamed_fallback_is_billed_from_its_final_usage_and_replayed_once(
    make_door: Callable[..., Door],
) -> None:
    # Prepare: the platform fallback streams and reports 17 in, 40 out.
    with running_streaming(
        StreamingProvider(["a ", "b ", "c"], input_tokens=17, output_tokens=40)
    ) as provider:
        door = make_door(provider.url)

        # Execute: the same request id twice.
        with door.stream(**{"X-Request-Id": "s-1"}) as first:
            first_events = list(_events(first))
        with door.stream(**{"X-Request-Id": "s-1"}) as again:
            again_events = list(_events(again))

    # Assert: one provider call; billed exactly the list price of the final usage.
    text = "".join(_content(e) for _, e in first_events)
    assert text == "a b c" and "".join(_content(e) for _, e in again_events) == text
    assert len(provider.requests) == 1
    expected = accounting.price(door.settings, "fallback-model", 17, 40)
    with transaction(door.engine) as session:
        billing = session.scalars(sa.select(FallbackBilling)).one()
        assert billing.total_cost_exact_usd == expected
        assert billing.total_fallback_tokens == 57


@pytest.mark.parametrize("client", CLIENTS)
def test_a_client_that_hangs_up_is_billed_for_what_was_generated(
    make_door: Callable[..., Door], client: str
) -> None:
    # Prepare: the billed fallback streams 30 words, 0.2 s apart.
    message = "tell me a long story please"
    pieces = [f"w{i} " for i in range(30)]
    with running_streaming(StreamingProvider(pieces, gap_s=0.2)) as provider:
        door = make_door(provider.url, upstream_client=client)

        # Execute: read three pieces, then hang up.
        received: list[str] = []
        with door.stream(message) as response:
            for _, event in _events(response):
                if _content(event):
                    received.append(_content(event))
                if len(received) == 3:
                    break
        hung_up = provider.hung_up.wait(10)
        rows = _wait_for(door.usage_rows)

    # Assert: the provider's stream was closed early; the usage counts the pieces received.
    assert received == pieces[:3]
    assert hung_up and not provider.finished.is_set()
    assert provider.sent < len(pieces)
    [row] = rows
    assert (row.status, row.error_code, row.is_fallback) == ("partial", "client_disconnected", True)
    assert 3 <= row.output_tokens <= provider.sent
    assert provider.sent - row.output_tokens <= 1
    assert row.input_tokens == len(message.split())
    expected = accounting.price(door.settings, "fallback-model", row.input_tokens, row.output_tokens)
    with transaction(door.engine) as session:
        billing = session.scalars(sa.select(FallbackBilling)).one()
        assert billing.total_cost_exact_usd == expected


def test_a_trickle_past_the_deadline_ends_the_stream_and_is_accounted(make_door: Callable[..., Door]) -> None:
    # Prepare: a tenant provider sending one piece a second; a 3 s cascade deadline.
    pieces = [f"t{i} " for i in range(20)]
    with running_streaming(StreamingProvider(pieces, gap_s=1.0)) as provider:
        door = make_door(None, cascade_deadline_s=3.0, provider_timeout_s=2.0)
        door.add_config(provider="openai", api_endpoint=provider.url)

        # Execute
        started = time.monotonic()
        with door.stream() as response:
            events = list(_events(response))
        took = time.monotonic() - started

    # Assert: a proper end within the deadline (plus a margin), with what had come; accounted partial.
    assert events[-1][1] == "[DONE]"
    got = [_content(e) for _, e in events if _content(e)]
    assert 1 <= len(got) < len(pieces) and got == pieces[: len(got)]
    assert took < 6
    [row] = door.usage_rows()
    assert (row.status, row.error_code) == ("partial", "timeout")
    assert row.output_tokens == len(got)


def _sse_raw(*events: bytes, reset: bool = False) -> Callable[[bytes, bytes, Any], None]:
    def reply(head: bytes, body: bytes, conn: Any) -> None:
        import socket
        import struct

        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for event in events:
            conn.sendall(event)
            time.sleep(0.05)
        if reset:  # RST now (linger 0 and close), before the server's orderly shutdown could send FIN
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    return reply


_FIRST = b'data: {"choices":[{"delta":{"content":"fine "}}]}\n\n'


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("events", "reset", "expected"),
    [
        ((b'data: {"choices":[{"delta":{"content":"a\\u0000"}}]}\n\n',), False, "fallback"),
        ((b'data: {"choices":[],"usage":{"prompt_tokens":Infinity}}\n\n',), False, "fallback"),
        ((_FIRST, b'data: {"choices":[{"delta":{"content":"\\u0000"}}]}\n\n'), False, "bad_response"),
        ((_FIRST,), True, "stream_broken"),
    ],
    ids=["nul-first", "infinity-first", "nul-later", "reset-later"],
)
def test_a_hostile_stream_fails_over_before_its_first_piece_and_ends_partial_after(
    make_door: Callable[..., Door], client: str, events: tuple[bytes, ...], reset: bool, expected: str
) -> None:
    from tests.orchestrator.fakes import running_hostile

    # Prepare: a hostile tenant stream; the platform fallback answers whole.
    with (
        running_streaming(StreamingProvider(["fallback"])) as fallback,
        running_hostile(_sse_raw(*events, reset=reset)) as hostile,
    ):
        door = make_door(fallback.url, upstream_client=client)
        door.add_config(provider="openai", api_endpoint=hostile.url)

        # Execute
        with door.stream() as response:
            got = [e for _, e in _events(response)]

    # Assert: before the first piece, the fallback answers; after it, the stream ends with what came.
    text = "".join(_content(e) for e in got)
    rows = sorted(door.usage_rows(), key=lambda r: r.is_fallback)
    assert got[-1] == "[DONE]"
    if expected == "fallback":
        assert text == "fallback"
        assert [(r.status, r.error_code) for r in rows] == [("error", "bad_response"), ("success", None)]
    else:
        assert text == "fine "
        assert [(r.status, r.error_code, r.output_tokens) for r in rows] == [("partial", expected, 1)]


def test_a_stream_holds_its_organization_slot_until_it_ends(make_door: Callable[..., Door]) -> None:
    import threading

    # Prepare: one provider call at a time per organization; a tenant stream of about 1.5 s.
    pieces = ["a ", "b ", "c ", "d"]
    with running_streaming(StreamingProvider(pieces, gap_s=0.5)) as provider:
        door = make_door(None, org_max_concurrency=1)
        door.add_config(provider="openai", api_endpoint=provider.url)
        texts: list[str] = []

        def first() -> None:
            with door.stream() as response:
                texts.append("".join(_content(e) for _, e in _events(response)))

        # Execute: a second chat of the organization while the first one streams.
        streaming = threading.Thread(target=first)
        streaming.start()
        _wait_for(lambda: provider.sent >= 1)
        with door.stream("second") as second:
            second_text = "".join(_content(e) for _, e in _events(second))
        streaming.join()

    # Assert: the second reached the provider only after the first stream had ended.
    assert texts == ["a b c d"]
    assert len(provider.arrivals) == 2
    assert provider.arrivals[1] >= provider.ended_at[0]
    assert second.status_code == 200 and second_text == "a b c d"


def _send_and_hang_up(door: Door, message: str, arrived: Callable[[], bool], **headers: str) -> None:
    """A raw client on loopback: sends a streamed chat, waits until ``arrived()``, then closes."""
    import socket
    from urllib.parse import urlsplit

    body = json.dumps(
        {"model": "agent/luca", "messages": [{"role": "user", "content": message}], "stream": True}
    ).encode()
    url = urlsplit(door.base)
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: {url.netloc}",
        f"Authorization: Bearer {door.user}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        _wait_for(arrived)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_client_that_hangs_up_before_the_first_piece_is_accounted_and_released(
    make_door: Callable[..., Door], client: str
) -> None:
    # Prepare: the billed fallback thinks 5 s before its first piece (room for a loaded machine's
    # slow hang-up path, under which 2 s was once exceeded); one provider call at a time.
    message = "a question that takes a while"
    first_piece_s = 5.0
    with running_streaming(StreamingProvider(["late ", "answer"], first_delay_s=first_piece_s)) as provider:
        door = make_door(provider.url, upstream_client=client, org_max_concurrency=1)

        # Execute: the client sends the request, and hangs up once the provider has it.
        started = time.monotonic()
        _send_and_hang_up(door, message, lambda: provider.requests, **{"X-Request-Id": "gone-1"})
        rows = _wait_for(door.usage_rows, seconds=10)
        accounted_after = time.monotonic() - started
        hung_up = provider.hung_up.wait(10)
        with transaction(door.engine) as session:
            claims = session.scalar(sa.select(sa.func.count()).select_from(LlmInflight))
            stored = session.scalars(sa.select(LlmRequest)).one()
            billing = session.scalars(sa.select(FallbackBilling)).one()
            stored_status = stored.status
            billed_cost, billed_tokens = billing.total_cost_exact_usd, billing.total_fallback_tokens
        # The organization's only provider slot is free again: the next chat gets an answer.
        with door.stream("and another one") as response:
            after = "".join(_content(e) for _, e in _events(response))
        with door.stream(message, **{"X-Request-Id": "gone-1"}) as again:
            again.read()

    # Assert: accounted at once as cut short by the client (nothing generated reached it), billed
    # for the input the provider read; the provider's stream closed unfinished; no claim left.
    [row] = rows
    assert (row.status, row.error_code, row.is_fallback) == ("partial", "client_disconnected", True)
    assert (row.input_tokens, row.output_tokens) == (len(message.split()), 0)
    assert accounted_after < first_piece_s  # not when the provider's first piece came
    assert hung_up and provider.ended_at == [provider.ended_at[0]]  # only the second chat finished
    assert claims == 0 and stored_status == "client_disconnected"
    assert billed_tokens == len(message.split())
    assert billed_cost == accounting.price(door.settings, "fallback-model", len(message.split()), 0)
    assert after == "late answer"
    assert again.status_code == 409 and "disconnected" in again.json()["error"]["message"]
    assert len(provider.requests) == 2  # the copy of the cut-short request was not sent again
