"""Stream events from hostile providers: what the reader takes, refuses, and how it counts usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator.adapters import MalformedReplyError
from orchestrator.streaming import MAX_EVENT_BYTES, StreamReader, events


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _events(*parts: bytes) -> list[str]:
    async def collect() -> list[str]:
        return [data async for data in events(_chunks(*parts))]

    return asyncio.run(collect())


def test_events_split_across_chunks_and_crlf_are_read() -> None:
    # Execute: an event boundary split between chunks, CRLF line ends, a comment, a multi-line event.
    got = _events(b"data: a\r\n\r", b"\n: keep-alive\n\ndata: b\ndata: c\n\nevent: x\ndata:d\n\n")

    # Assert
    assert got == ["a", "b\nc", "d"]


@pytest.mark.parametrize(
    "parts",
    [(b"data: " + b"x" * (MAX_EVENT_BYTES + 10),), (b"data: \xff\xfe\n\n",)],
    ids=["endless-event", "not-utf8"],
)
def test_hostile_event_framing_is_refused(parts: tuple[bytes, ...]) -> None:
    with pytest.raises(MalformedReplyError):
        _events(*parts)


@pytest.mark.parametrize(
    "data",
    [
        '{"choices":[{"delta":{"content":"a\\u0000b"}}]}',  # NUL in the text
        '{"choices":[{"delta":{"content":5}}]}',  # text that is not text
        '{"choices":[],"usage":{"prompt_tokens":Infinity,"completion_tokens":1}}',
        '{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":3e9}}',
        '{"choices":[],"usage":{"prompt_tokens":-1,"completion_tokens":1}}',
        '{"choices":[{"delta":"nope"}]}',
        '{"error":{"message":"overloaded"}}',
        "[1, 2]",
        "{not json",
        "[" * 100_000,
    ],
    ids=["nul", "number-text", "infinity", "huge", "negative", "delta", "error", "array", "garbage", "deep"],
)
def test_hostile_openai_events_are_malformed_replies(data: str) -> None:
    with pytest.raises(MalformedReplyError):
        StreamReader("openai").feed(data)


@pytest.mark.parametrize(
    "data",
    [
        '{"type":"message_start","message":{"usage":{"input_tokens":NaN}}}',
        '{"type":"message_start","message":"nope"}',
        '{"type":"content_block_delta","delta":{"type":"text_delta","text":"\\u0000"}}',
        '{"type":"message_delta","usage":{"output_tokens":1.5}}',
        '{"type":"error","error":{"type":"overloaded_error"}}',
    ],
    ids=["nan", "message", "nul", "fraction", "error"],
)
def test_hostile_anthropic_events_are_malformed_replies(data: str) -> None:
    with pytest.raises(MalformedReplyError):
        StreamReader("anthropic").feed(data)


def test_usage_is_the_providers_when_it_came_else_counted() -> None:
    # Prepare
    complete, cut = StreamReader("openai"), StreamReader("openai")
    anthropic_cut = StreamReader("anthropic")

    # Execute
    for reader in (complete, cut):
        for word in ("one ", "two ", "three"):
            reader.feed(f'{{"choices":[{{"delta":{{"content":"{word}"}}}}]}}')
    complete.feed('{"choices":[],"usage":{"prompt_tokens":40,"completion_tokens":7}}')
    complete.feed("[DONE]")
    anthropic_cut.feed('{"type":"message_start","message":{"usage":{"input_tokens":30,"output_tokens":1}}}')
    anthropic_cut.feed('{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}')
    anthropic_cut.feed('{"type":"content_block_delta","delta":{"type":"text_delta","text":"y"}}')

    # Assert: exact when the provider said; else the message's words in and the deltas out.
    assert complete.usage(5) == (40, 7, True) and complete.finished
    assert cut.usage(5) == (5, 3, False)
    assert anthropic_cut.usage(5) == (30, 2, False)
