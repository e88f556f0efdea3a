"""LiteLLM (a real client no one here wrote) pointed at the OpenAI door as an OpenAI-compatible
provider: ``model="openai/agent/luca"``, ``api_base`` the service's ``/v1``, our token as the key."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.service import create_app
from schema import directory
from schema.db import transaction
from schema.models import LlmUsageLog
from tests.orchestrator.conftest import make_settings
from tests.orchestrator.fakes import FakeProvider, StreamingProvider, running_app, running_streaming

# LiteLLM fetches its model price list from the internet at import unless told to use its own copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm", reason="litellm is in the dev extra; install it to run these")


@pytest.fixture
def served(engine: Engine, tmp_path: Path) -> Iterator[Any]:
    def start(fallback_url: str) -> tuple[str, str]:
        app = create_app(make_settings(tmp_path, fallback_url), engine)
        with transaction(engine) as session:
            org = directory.create_organization(session, f"firm-{uuid.uuid4().hex[:8]}").id
        token = app.state.services.tokens.issue(role="org_user", organization_id=org)
        context = running_app(app)
        contexts.append(context)
        return context.__enter__(), token

    contexts: list[Any] = []
    yield start
    for context in reversed(contexts):
        context.__exit__(None, None, None)


def test_litellm_completion_through_the_door(served: Any, fallback: FakeProvider) -> None:
    # Prepare
    base, token = served(fallback.url)

    # Execute
    response = litellm.completion(
        model="openai/agent/luca",
        api_base=f"{base}/v1",
        api_key=token,
        messages=[{"role": "user", "content": "What is the VAT rate?"}],
        max_tokens=30,
        num_retries=0,
    )

    # Assert: the cascade's answer with the provider's usage; the max_tokens reached the provider.
    assert response.choices[0].message.content == "fallback answer"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (10, 20)
    assert fallback.received[-1].body["max_tokens"] == 30


def test_litellm_streaming_through_the_door(served: Any, engine: Engine) -> None:
    # Prepare: the fallback streams three pieces with its usage.
    pieces = ["Twenty ", "per", " cent"]
    with running_streaming(StreamingProvider(pieces, gap_s=0.1, input_tokens=8, output_tokens=3)) as provider:
        base, token = served(provider.url)

        # Execute
        stream = litellm.completion(
            model="openai/agent/luca",
            api_base=f"{base}/v1",
            api_key=token,
            messages=[{"role": "user", "content": "What is the VAT rate?"}],
            stream=True,
            stream_options={"include_usage": True},
            num_retries=0,
        )
        chunks = list(stream)

    # Assert: the pieces in order, and the provider's usage in LiteLLM's last chunk.
    text = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(text) == "Twenty per cent"
    usages = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usages and (usages[-1].prompt_tokens, usages[-1].completion_tokens) == (8, 3)
    with transaction(engine) as session:
        rows = session.execute(sa.select(LlmUsageLog.input_tokens, LlmUsageLog.output_tokens)).all()
    assert [tuple(r) for r in rows] == [(8, 3)]
