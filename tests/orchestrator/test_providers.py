"""Each provider's wire format over real loopback HTTP, and its usage mapping (cached tokens once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from orchestrator import adapters
from tests.orchestrator.conftest import Service
from tests.orchestrator.fakes import FakeProvider

CASES = [
    ("openai", {}, "/chat/completions", "authorization"),
    ("mistral", {}, "/chat/completions", "authorization"),
    ("groq", {}, "/chat/completions", "authorization"),
    ("ollama", {}, "/chat/completions", "authorization"),
    ("custom", {}, "/chat/completions", "authorization"),
    (
        "azure_openai",
        {"deployment": "dep-1", "api_version": "2024-06-01"},
        "/openai/deployments/dep-1/chat/completions",
        "api-key",
    ),
    ("anthropic", {}, "/v1/messages", "x-api-key"),
    ("gemini", {}, "/v1beta/models/m-1:generateContent", "x-goog-api-key"),
    ("cohere", {}, "/v2/chat", "authorization"),
]


@pytest.mark.parametrize(("provider", "config_json", "path", "auth_header"), CASES)
def test_provider_wire_format_and_usage(
    service: Service,
    provider_factory: Callable[..., FakeProvider],
    provider: str,
    config_json: dict[str, Any],
    path: str,
    auth_header: str,
) -> None:
    # Prepare: 40 input tokens of which 12 were served from the provider's prompt cache.
    fake = provider_factory(
        api_key="sk-wire", reply=f"hi from {provider}", input_tokens=40, output_tokens=7, cached_tokens=12
    )
    org = service.org()
    service.add_config(
        org,
        provider=provider,
        model_id="m-1",
        api_endpoint=fake.url,
        api_key="sk-wire",
        config_json=config_json,
    )

    # Execute
    body = service.chat(org, message="Summarize the ledger", max_tokens=64, temperature=0.2).json()

    # Assert
    assert body["content"] == f"hi from {provider}" and body["provider"] == provider
    assert (body["input_tokens"], body["output_tokens"]) == (40, 7)
    (received,) = fake.received
    assert received.path == path and "sk-wire" in received.headers[auth_header]
    if provider == "azure_openai":
        assert received.query["api-version"] == ["2024-06-01"]
    if provider == "gemini":
        assert received.body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.2}
    else:
        assert (
            received.body["max_tokens"] == 64
            and received.body["messages"][0]["content"] == "Summarize the ledger"
        )


def test_usage_mapping_counts_cached_and_reasoning_tokens_once() -> None:
    # Execute
    openai = adapters.parse(
        "openai",
        {
            "choices": [{"message": {"content": "a"}}],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 30,
                "prompt_tokens_details": {"cached_tokens": 80},
                "completion_tokens_details": {"reasoning_tokens": 20},
            },
        },
    )
    anthropic = adapters.parse(
        "anthropic",
        {
            "content": [{"type": "text", "text": "b"}],
            "usage": {
                "input_tokens": 20,
                "cache_read_input_tokens": 80,
                "cache_creation_input_tokens": 5,
                "output_tokens": 9,
            },
        },
    )
    gemini = adapters.parse(
        "gemini",
        {
            "candidates": [{"content": {"parts": [{"text": "c"}, {"text": "t", "thought": True}]}}],
            "usageMetadata": {
                "promptTokenCount": 50,
                "cachedContentTokenCount": 40,
                "candidatesTokenCount": 6,
                "thoughtsTokenCount": 4,
            },
        },
    )
    cohere = adapters.parse(
        "cohere",
        {
            "message": {"content": [{"type": "text", "text": "d"}]},
            "usage": {
                "billed_units": {"input_tokens": 11, "output_tokens": 3},
                "tokens": {"input_tokens": 70, "output_tokens": 3},
            },
        },
    )

    # Assert
    assert (openai.input_tokens, openai.output_tokens) == (100, 30)
    assert (anthropic.input_tokens, anthropic.output_tokens) == (105, 9)
    assert (gemini.content, gemini.input_tokens, gemini.output_tokens) == ("c", 50, 10)
    assert (cohere.input_tokens, cohere.output_tokens) == (11, 3)


def test_malformed_reply_is_an_error_not_a_crash() -> None:
    with pytest.raises(adapters.MalformedReplyError):
        adapters.parse("openai", {"choices": []})
