"""The OpenAI-compatible door, driven by the official ``openai`` Python client (a real client no one
here wrote) against the service on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.service import create_app
from schema import directory
from schema.db import transaction
from schema.models import FallbackBilling, LlmRequest, LlmUsageLog
from tests.orchestrator.conftest import make_settings
from tests.orchestrator.fakes import FakeProvider, running_app


@dataclass
class Door:
    base: str
    org: uuid.UUID
    token: str
    engine: Engine

    def client(self, token: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base}/v1", api_key=token or self.token, max_retries=0, timeout=30
        )


@pytest.fixture
def door(engine: Engine, tmp_path: Path, fallback: FakeProvider) -> Iterator[Door]:
    app = create_app(make_settings(tmp_path, fallback.url), engine)
    with transaction(engine) as session:
        org = directory.create_organization(session, f"firm-{uuid.uuid4().hex[:8]}", "pay_as_you_go").id
    token = app.state.services.tokens.issue(role="org_user", organization_id=org)
    with running_app(app) as base:
        yield Door(base, org, token, engine)


def test_models_lists_the_agents(door: Door) -> None:
    ids = [m.id for m in door.client().models.list()]
    assert "agent/luca" in ids and all(i.startswith("agent/") for i in ids)


def test_a_completion_runs_the_cascade_and_is_accounted(door: Door, fallback: FakeProvider) -> None:
    # Execute
    completion = door.client().chat.completions.create(
        model="agent/luca",
        messages=[
            {"role": "system", "content": "You are an accountant."},
            {"role": "user", "content": "What is the VAT rate?"},
        ],
        max_tokens=50,
        extra_headers={"X-Request-Id": "oa-1"},
    )
    again = door.client().chat.completions.create(
        model="agent/luca",
        messages=[
            {"role": "system", "content": "You are an accountant."},
            {"role": "user", "content": "What is the VAT rate?"},
        ],
        max_tokens=50,
        extra_headers={"X-Request-Id": "oa-1"},
    )

    # Assert: the fallback answered (no tenant config), usage as the provider counted it, billed once.
    assert completion.choices[0].message.content == "fallback answer"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 20)
    assert again.choices[0].message.content == "fallback answer"
    assert fallback.received[-1].body["messages"] == [{"role": "user", "content": "What is the VAT rate?"}]
    assert fallback.received[-1].body["max_tokens"] == 50
    assert len(fallback.received) == 1
    with transaction(door.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(LlmRequest)) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(LlmUsageLog)) == 1
        billing = session.scalars(sa.select(FallbackBilling)).one()
        assert billing.total_fallback_requests == 1


def test_streaming_sends_sse_chunks_with_usage(door: Door) -> None:
    stream = door.client().chat.completions.create(
        model="agent/luca",
        messages=[{"role": "user", "content": "Stream it"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]

    assert text == "fallback answer"
    assert finishes == ["stop"]
    assert len(usage) == 1 and usage[0].total_tokens == 30


def test_errors_are_openai_errors(door: Door) -> None:
    with pytest.raises(openai.AuthenticationError):
        door.client("not-a-token").chat.completions.create(
            model="agent/luca", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError) as missing:
        door.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError):
        door.client().chat.completions.create(
            model="agent/luca", messages=[{"role": "system", "content": "no user message"}]
        )
    assert "agent/<slug>" in str(missing.value)
