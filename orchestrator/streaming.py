"""Streamed provider replies: the request flags, server-sent events, and the usage of a stream.

Providers that stream (``STREAMING``): the OpenAI family (``stream: true`` with
``stream_options.include_usage``, so the last chunk carries ``usage``) and Anthropic
(``message_start`` carries the input tokens, ``message_delta`` the output tokens). Gemini and
Cohere answer whole replies.

Usage of a stream (``StreamReader.usage``), the rule billing follows:

- the stream ended with the provider's usage: exactly that usage;
- it was cut short (the client disconnected, the provider broke off, the deadline passed):
  input tokens are the provider's figure when it sent one (Anthropic does in ``message_start``),
  else the whitespace word count of the message; output tokens are the number of content deltas
  received from the provider (OpenAI-style and Anthropic streams carry about one token per
  delta), or the provider's running figure if that is higher.

A client that leaves before the first piece cuts the attempt under way short the same way (no
delta received: output is 0 unless the provider reported more); the request id's outcome is then
``client_disconnected`` with no answer (``Cascade._cut_short``).

The attempt's ``llm_usage_log`` row says which: ``success`` (exact), ``success`` with error code
``usage_counted`` (complete, but the provider sent no usage), or ``partial`` with the reason
(``client_disconnected``, ``stream_broken``, ``timeout``, ``bad_response``, ``response_too_large``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from orchestrator import adapters
from orchestrator.adapters import MalformedReplyError, answer_text, token_count

STREAMING: tuple[str, ...] = (*adapters.OPENAI_FAMILY, "anthropic")
#: One server-sent event larger than this is not a chat delta: the stream is refused.
MAX_EVENT_BYTES = 1024 * 1024


def stream_call(provider: str, call: adapters.HttpCall) -> adapters.HttpCall:
    """``call`` asking the provider to stream (with usage at the end where the API needs asking)."""
    body = dict(call.body, stream=True)
    if provider in adapters.OPENAI_FAMILY:
        body["stream_options"] = {"include_usage": True}
    return replace(call, body=body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event in ``chunks`` (LF or CRLF line ends, comments skipped)."""
    buffer = b""
    async for chunk in chunks:
        buffer = (buffer + chunk).replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) >= 0:
            raw, buffer = buffer[:end], buffer[end + 2 :]
            data = [line[5:].removeprefix(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
            if data:
                try:
                    yield b"\n".join(data).decode("utf-8")
                except UnicodeDecodeError:
                    raise MalformedReplyError("a stream event is not UTF-8") from None
        if len(buffer) > MAX_EVENT_BYTES:
            raise MalformedReplyError("a stream event is too large")


@dataclass
class StreamReader:
    """Reads one provider's stream events: the text of each delta, the usage, the end."""

    provider: str
    deltas: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_final: bool = False
    finished: bool = False

    def feed(self, data: str) -> str:
        """The answer text in event ``data`` ('' for events without text)."""
        if self.provider == "anthropic":
            text = self._anthropic(data)
        elif data.strip() == "[DONE]":
            self.finished = True
            return ""
        else:
            text = self._openai(data)
        text = answer_text(text)  # refused text (NUL, not a string) is not counted
        if text:
            self.deltas += 1
        return text

    def usage(self, message_tokens: int) -> tuple[int, int, bool]:
        """(input, output, exact): the provider's final usage, else the module's counting rule."""
        if self.usage_final and self.input_tokens is not None and self.output_tokens is not None:
            return self.input_tokens, self.output_tokens, True
        given_input = self.input_tokens if self.input_tokens is not None else message_tokens
        return given_input, max(self.deltas, self.output_tokens or 0), False

    @staticmethod
    def _json(data: str) -> Any:
        try:
            value = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise MalformedReplyError("a stream event is not JSON") from None
        if not isinstance(value, dict):
            raise MalformedReplyError("a stream event is not a JSON object")
        return value

    def _openai(self, data: str) -> str:
        event = self._json(data)
        if "error" in event:
            raise MalformedReplyError("the provider sent an error in its stream")
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = token_count(usage.get("prompt_tokens"))
            self.output_tokens = token_count(usage.get("completion_tokens"))
            self.usage_final = True
        choices = event.get("choices") or []
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        delta = choices[0].get("delta") or {}
        if not isinstance(delta, dict):
            raise MalformedReplyError("a stream delta is not an object")
        return delta.get("content") or ""

    def _anthropic(self, data: str) -> str:
        event = self._json(data)
        kind = event.get("type")
        try:
            if kind == "message_start":
                usage = event["message"].get("usage") or {}
                self.input_tokens = (
                    token_count(usage.get("input_tokens"))
                    + token_count(usage.get("cache_creation_input_tokens"))
                    + token_count(usage.get("cache_read_input_tokens"))
                )
                self.output_tokens = token_count(usage.get("output_tokens"))
            elif kind == "content_block_delta":
                delta = event["delta"]
                return str(delta.get("text") or "") if delta.get("type") == "text_delta" else ""
            elif kind == "message_delta":
                usage = event.get("usage") or {}
                self.output_tokens = token_count(usage.get("output_tokens"))
                self.usage_final = self.input_tokens is not None
            elif kind == "message_stop":
                self.finished = True
            elif kind == "error":
                raise MalformedReplyError("the provider sent an error in its stream")
        except (KeyError, TypeError, AttributeError):
            raise MalformedReplyError(f"anthropic stream event {kind} is malformed") from None
        return ""
