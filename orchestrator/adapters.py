"""Provider wire formats: build the HTTP request of a chat, read content and usage from the reply.

Adapters are pure (no I/O): the cascade sends what ``build`` returns with its shared upstream client
and hands the JSON body to ``parse``. Usage maps to (input, output) tokens, each token counted once:

- OpenAI family: ``prompt_tokens`` (already includes ``prompt_tokens_details.cached_tokens``),
  ``completion_tokens`` (already includes reasoning tokens).
- Anthropic: ``input_tokens`` excludes cache reads and writes, so input = input_tokens +
  cache_creation_input_tokens + cache_read_input_tokens; output = ``output_tokens``.
- Gemini: ``promptTokenCount`` (includes ``cachedContentTokenCount``); output =
  ``candidatesTokenCount`` + ``thoughtsTokenCount``.
- Cohere v2: ``usage.billed_units`` (what is billed), else ``usage.tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from schema.errors import InvalidInputError

OPENAI_FAMILY: tuple[str, ...] = (
    "openai",
    "azure_openai",
    "mistral",
    "groq",
    "deepseek",
    "together",
    "fireworks",
    "ollama",
    "custom",
    "fine_tuned",
)

#: Public base URLs; providers without one (azure_openai, custom, fine_tuned) need ``api_endpoint``.
DEFAULT_ENDPOINTS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "mistral": "https://api.mistral.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together": "https://api.together.xyz/v1",
    "fireworks": "https://api.fireworks.ai/inference/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "cohere": "https://api.cohere.com",
}
NEEDS_ENDPOINT: tuple[str, ...] = ("azure_openai", "custom", "fine_tuned")
#: Providers that run without a key (a local Ollama, a self-hosted custom server).
KEY_OPTIONAL: tuple[str, ...] = ("ollama", "custom", "fine_tuned")
AZURE_DEFAULT_API_VERSION = "2024-10-21"
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class Target:
    """One provider endpoint with everything a call needs (the key only in memory)."""

    provider: str
    model_id: str
    api_endpoint: str | None
    api_key: str | None
    config_json: dict[str, Any] = field(default_factory=dict)

    def base_url(self) -> str:
        base = self.api_endpoint or DEFAULT_ENDPOINTS.get(self.provider)
        if not base:
            raise InvalidInputError(f"provider {self.provider} needs api_endpoint")
        return base.rstrip("/")


@dataclass(frozen=True)
class HttpCall:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    content: str
    input_tokens: int
    output_tokens: int


class MalformedReplyError(Exception):
    """The provider answered 2xx with a body we cannot read."""


def build(target: Target, message: str, max_tokens: int, temperature: float) -> HttpCall:
    provider = target.provider
    if provider in OPENAI_FAMILY:
        return _openai(target, message, max_tokens, temperature)
    if provider == "anthropic":
        headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
        if target.api_key:
            headers["x-api-key"] = target.api_key
        body = {
            "model": target.model_id,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "messages": [{"role": "user", "content": message}],
        }
        return HttpCall(f"{target.base_url()}/v1/messages", headers, body)
    if provider == "gemini":
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        body = {
            "contents": [{"role": "user", "parts": [{"text": message}]}],
            "generationConfig": {"maxOutputTokens": max_tokens, "temperature": temperature},
        }
        url = f"{target.base_url()}/v1beta/models/{quote(target.model_id, safe='')}:generateContent"
        return HttpCall(url, headers, body)
    if provider == "cohere":
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        body = {
            "model": target.model_id,
            "messages": [{"role": "user", "content": message}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        return HttpCall(f"{target.base_url()}/v2/chat", headers, body)
    raise InvalidInputError(f"provider '{provider}' has no adapter")


def _openai(target: Target, message: str, max_tokens: int, temperature: float) -> HttpCall:
    headers = {"content-type": "application/json"}
    body: dict[str, Any] = {
        "model": target.model_id,
        "messages": [{"role": "user", "content": message}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    if target.provider == "azure_openai":
        deployment = str(target.config_json.get("deployment") or target.model_id)
        version = str(target.config_json.get("api_version") or AZURE_DEFAULT_API_VERSION)
        url = (
            f"{target.base_url()}/openai/deployments/{quote(deployment, safe='')}"
            f"/chat/completions?api-version={quote(version, safe='')}"
        )
        if target.api_key:
            headers["api-key"] = target.api_key
        return HttpCall(url, headers, body)
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    return HttpCall(f"{target.base_url()}/chat/completions", headers, body)


#: More tokens than any model produces or reads in one call: a reply claiming more is not believed.
MAX_TOKENS_PER_CALL = 10_000_000


def token_count(value: Any) -> int:
    """A token count from a reply: missing is 0; negative, fractional, huge or non-numbers are refused."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedReplyError("a token count is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise MalformedReplyError("a token count is not a whole number")
    if not 0 <= value <= MAX_TOKENS_PER_CALL:
        raise MalformedReplyError("a token count is out of range")
    return int(value)


def answer_text(value: Any) -> str:
    """Answer text: a string without U+0000 (which PostgreSQL cannot store in text or JSONB)."""
    if not isinstance(value, str):
        raise MalformedReplyError("the answer is not text")
    if "\x00" in value:
        raise MalformedReplyError("the answer contains U+0000")
    return value


def parse(provider: str, body: Any) -> Reply:
    reply = _parse(provider, body)
    return Reply(answer_text(reply.content), reply.input_tokens, reply.output_tokens)


def _parse(provider: str, body: Any) -> Reply:
    try:
        if provider in OPENAI_FAMILY:
            usage = body.get("usage") or {}
            content = body["choices"][0]["message"].get("content") or ""
            return Reply(
                content, token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens"))
            )
        if provider == "anthropic":
            usage = body.get("usage") or {}
            content = "".join(b.get("text", "") for b in body["content"] if b.get("type") == "text")
            prompt = (
                token_count(usage.get("input_tokens"))
                + token_count(usage.get("cache_creation_input_tokens"))
                + token_count(usage.get("cache_read_input_tokens"))
            )
            return Reply(content, prompt, token_count(usage.get("output_tokens")))
        if provider == "gemini":
            usage = body.get("usageMetadata") or {}
            parts = body["candidates"][0]["content"].get("parts") or []
            content = "".join(p.get("text", "") for p in parts if not p.get("thought"))
            output = token_count(usage.get("candidatesTokenCount")) + token_count(
                usage.get("thoughtsTokenCount")
            )
            return Reply(content, token_count(usage.get("promptTokenCount")), output)
        if provider == "cohere":
            usage = body.get("usage") or {}
            units = usage.get("billed_units") or usage.get("tokens") or {}
            content = "".join(
                c.get("text", "") for c in body["message"]["content"] if c.get("type") == "text"
            )
            return Reply(
                content, token_count(units.get("input_tokens")), token_count(units.get("output_tokens"))
            )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise MalformedReplyError(f"{provider} reply is missing {exc}") from None
    raise MalformedReplyError(f"provider '{provider}' has no adapter")
