"""The OpenAI-compatible door: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI client (the official ``openai`` package, LiteLLM's ``openai/`` provider, curl) can use
the cascade: ``base_url`` is the service's ``/v1``, the API key is an Accute bearer token of an
organization (``org_user`` or ``org_admin``), and ``model`` names an agent as ``agent/<slug>``
(``GET /v1/models`` lists them). The request runs the same cascade, accounting and idempotency as
``/v1/orgs/{org}/agents/{agent}/chat`` (``X-Request-Id`` makes it idempotent), for the token's
organization.

The cascade takes one message: the content of the last ``user`` message (text parts joined).
``max_tokens`` (or ``max_completion_tokens``) and ``temperature`` pass through. Usage is the
answering provider's token counts.

``stream: true`` answers with server-sent events in OpenAI's chunk format: a first chunk with the
role, a chunk per piece of text, a last chunk with ``finish_reason`` (and ``usage`` when
``stream_options.include_usage``), then ``data: [DONE]``. A tenant provider (or the fallback)
that streams (OpenAI family, Anthropic) is passed through piece by piece as its deltas arrive
(``Cascade.chat_stream``); other tiers and stored answers come as one piece. The usage is the
provider's final usage, exactly; a client that disconnects, mid-stream or before the first piece,
closes the provider's stream and is accounted (and, for the fallback, billed) for what was
received, by the rule in ``orchestrator.streaming`` (``orchestrator.event_stream`` notices it). Errors before the first piece answer with an HTTP error status; a
provider failing after it ends the stream early, accounted as ``partial``. Errors use OpenAI's shape,
``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import accounting
from orchestrator.auth import Principal
from orchestrator.cascade import ChatRequest, Timing, caller_key
from orchestrator.event_stream import ClientWatch, EventStream, client_closed
from schema.errors import AccuteError, AuthenticationError, InvalidInputError, NotFoundError

MODEL_PREFIX = "agent/"
COMPLETIONS = "/v1/chat/completions"
CHAT_ROLES = ("org_admin", "org_user")


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class CompletionBody(BaseModel):
    """The OpenAI request fields the cascade uses; others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=200)
    messages: list[_Message] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)


def _error(status: int, message: str, kind: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": None}}, status)


def _from_accute(exc: AccuteError) -> JSONResponse:
    kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
    kind = kinds.get(exc.http_status, "invalid_request_error" if exc.http_status < 500 else "api_error")
    message = exc.code if exc.http_status in (401, 403) else exc.message
    headers = exc.headers or ({"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None)
    response = _error(exc.http_status, message, kind, exc.code)
    if headers:
        response.headers.update(headers)
    return response


def _last_user_text(messages: list[_Message]) -> str:
    for message in reversed(messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        if isinstance(message.content, list):
            return "".join(
                str(part.get("text", "")) for part in message.content if part.get("type") == "text"
            )
    raise InvalidInputError("messages: send at least one user message with text")


def install(
    app: FastAPI,
    services: Any,
    authenticate: Callable[[str, Request], Awaitable[Principal]],
) -> None:
    """Add the OpenAI-compatible routes to ``app`` (``services``: the app's ``Services``)."""

    async def principal(http: Request) -> Principal:
        scheme, token = get_authorization_scheme_param(http.headers.get("authorization"))
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("unauthenticated")
        who = await authenticate(token, http)
        if who.organization_id is None:
            raise InvalidInputError("use a token of an organization (org_user or org_admin)")
        who.require_org(who.organization_id, CHAT_ROLES)
        return who

    @app.get("/v1/models", tags=["openai"], summary="Agents as OpenAI models (agent/<slug>)")
    async def models(http: Request) -> Response:
        try:
            await principal(http)
            assert services.cascade is not None
            slugs = await services.cascade.agent_slugs()
        except AccuteError as exc:
            return _from_accute(exc)
        data = [
            {"id": f"{MODEL_PREFIX}{slug}", "object": "model", "created": 0, "owned_by": "accute"}
            for slug in slugs
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.post(COMPLETIONS, tags=["openai"], summary="OpenAI chat completions over the cascade")
    async def completions(http: Request) -> Response:
        try:
            who = await principal(http)
            try:
                body = CompletionBody.model_validate_json(await http.body())
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                where = ".".join(str(p) for p in first.get("loc", ()))
                raise InvalidInputError(f"{where}: {first.get('msg', 'invalid')}") from None
            if not body.model.startswith(MODEL_PREFIX) or len(body.model) == len(MODEL_PREFIX):
                raise NotFoundError(
                    f"model '{body.model}' does not exist; models are agent/<slug> (GET /v1/models)"
                )
            request_id = http.headers.get("x-request-id")
            if request_id is not None and not 0 < len(request_id) <= 100:
                raise InvalidInputError("x-request-id: 1 to 100 characters")
            assert services.cascade is not None and who.organization_id is not None
            request = ChatRequest(
                organization_id=who.organization_id,
                agent_slug=body.model[len(MODEL_PREFIX) :],
                message=_last_user_text(body.messages),
                request_id=request_id or accounting.new_id().hex,
                max_tokens=body.max_completion_tokens or body.max_tokens,
                temperature=body.temperature,
                client_request_id=request_id is not None,
                caller=caller_key(who.subject),
                user_id=who.user_id,
            )
            if body.stream:
                # From here the client's departure cancels the request (the cascade then closes
                # the provider's stream and accounts for what was generated).
                watch = ClientWatch(http.receive)
                pieces = services.cascade.chat_stream(request, Timing())
                try:
                    opening = await anext(pieces)  # errors before the first piece answer as errors
                except asyncio.CancelledError:
                    if watch.client_left():
                        return client_closed()
                    raise
                except BaseException:
                    watch.stop()
                    raise
            else:
                answer = await services.cascade.chat(request, Timing())
        except AccuteError as exc:
            return _from_accute(exc)
        completion_id = f"chatcmpl-{request.request_id}"
        created = int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return EventStream(
                _sse(completion_id, created, body.model, opening, pieces, include_usage),
                watch,
                headers={"cache-control": "no-cache"},
            )
        usage = _usage(answer)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer["content"]},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "system_fingerprint": f"{answer['provider']}/{answer['model_id']}",
            }
        )


def _chunk(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: Literal["stop"] | None,
    usage: dict[str, int] | None = None,
    choices: bool = True,
) -> bytes:
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
    }
    if usage is not None:
        payload["usage"] = usage
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    return {
        "prompt_tokens": answer["input_tokens"],
        "completion_tokens": answer["output_tokens"],
        "total_tokens": answer["input_tokens"] + answer["output_tokens"],
    }


async def _sse(
    completion_id: str,
    created: int,
    model: str,
    first: str | dict[str, Any],
    pieces: AsyncGenerator[str | dict[str, Any], None],
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    """The cascade's pieces as OpenAI chunks, each sent as it comes; closing this closes ``pieces``."""
    try:
        # The role chunk leaves with the first piece: one write (one trip through the ASGI server)
        # before the first token, not two.
        opening = _chunk(completion_id, created, model, {"role": "assistant", "content": ""}, None)
        item = first
        if isinstance(item, str) and item:
            yield opening + _chunk(completion_id, created, model, {"content": item}, None)
            item = await anext(pieces)
        else:
            yield opening
        while isinstance(item, str):
            if item:
                yield _chunk(completion_id, created, model, {"content": item}, None)
            item = await anext(pieces)
        yield _chunk(completion_id, created, model, {}, "stop")
        if include_usage:  # OpenAI's include_usage: a last chunk with no choices and the usage
            yield _chunk(completion_id, created, model, {}, None, _usage(item), choices=False)
        yield b"data: [DONE]\n\n"
    finally:
        # The client went away (or the stream ended): the cascade closes the provider's stream
        # and accounts for what it carried (closing runs no await that a cancellation could stop).
        await pieces.aclose()
