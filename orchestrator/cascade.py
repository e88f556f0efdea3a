"""The inference cascade: the tenant's own providers → VAMN → the billed platform fallback.

One chat request runs under one overall deadline (``ACCUTE_CASCADE_DEADLINE_S``):

1. Tenant configs, by priority: active, for the organization (or the request's workspace),
   circuit closed (or due a half-open trial), within their rpm/tpm. Each provider gets up to
   ``ACCUTE_RETRY_MAX_ATTEMPTS`` attempts on 429, 5xx, timeouts and connection errors, with
   exponential backoff and jitter, honouring ``Retry-After`` (a wait longer than
   ``ACCUTE_RETRY_BACKOFF_MAX_S`` moves on to the next provider instead). Other 4xx replies and
   unreadable bodies fail the provider at once.
2. VAMN: the agent's primary head (``agent_vamn_routing``) served by ``orchestrator.vamn``.
3. The fallback from settings, billed.

Every attempt that was sent becomes an ``llm_usage_log`` row (errors with zero tokens), written
with the request's other rows by ``orchestrator.writer`` (group commit: the rows of concurrent
requests share one transaction; each request answers once its transaction committed).

``chat_stream`` is the same cascade for streamed answers (the OpenAI door's ``stream: true``): a
provider that streams is passed through piece by piece, accounted when its stream ends or is cut
short (``orchestrator.streaming`` has the counting rule).

Provider calls go through ``orchestrator.upstream`` (keep-alive HTTP/1.1). ``Timing.upstream_s``
adds up the time a request spent waiting for models (provider calls, failed attempts included, and
VAMN inference); the service reports the rest as its own overhead.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import anyio
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from orchestrator import accounting, adapters, configs, streaming
from orchestrator.accounting import Outcome, UsageRow, VamnRow
from orchestrator.cache import ResponseCache, cache_key
from orchestrator.keys import KeyRing
from orchestrator.limits import CircuitBreakers, RateLimiter
from orchestrator.upstream import (
    EgressDenied,
    Upstream,
    UpstreamError,
    UpstreamStream,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from orchestrator.vamn import VamnServer, count_tokens
from orchestrator.writer import AccountingWriter
from schema import restrictions
from schema.config import Settings
from schema.db import transaction
from schema.errors import (
    ConflictError,
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    UpstreamUnavailableError,
)
from schema.models import AgentSession, AgentVamnRouting, Organization
from schema.timeutil import utcnow

log = logging.getLogger("accute.orchestrator")

FALLBACK_PROVIDER_NAME = "finaceverse_fallback"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_TEMPERATURE = 0.7
#: A worker waits for another worker's copy of a request id this long past the cascade deadline;
#: a claim older than deadline + grace belongs to a dead process and is taken over.
INFLIGHT_GRACE_S = 30.0
#: The status of a streamed attempt (and request) cut short because its client went away.
CLIENT_DISCONNECTED = "client_disconnected"


@dataclass
class ChatRequest:
    organization_id: uuid.UUID
    agent_slug: str
    message: str
    request_id: str
    max_tokens: int | None = None
    temperature: float | None = None
    session_id: uuid.UUID | None = None
    workspace_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    client_request_id: bool = False
    caller: str = ""
    """SHA-256 (hex) of the caller's token subject (``caller_key``): request ids are per caller."""

    @property
    def request_hash(self) -> str:
        """SHA-256 of what is asked: a reused request id must ask exactly this again."""
        fields = [
            self.agent_slug,
            self.message,
            str(self.session_id or ""),
            str(self.workspace_id or ""),
            str(self.max_tokens or ""),
            repr(self.temperature),
        ]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def caller_key(subject: str) -> str:
    return hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Timing:
    """Seconds one request spent waiting for models (provider calls and VAMN inference)."""

    upstream_s: float = 0.0


@dataclass
class _OrgState:
    loaded_at: float
    billing_model: str
    configs: list[configs.ConfigView]
    #: False while the organization's dead man's switch holds the fallback disabled.
    fallback_allowed: bool = True


class _Failed(Exception):
    def __init__(self, code: str, retryable: bool, wait_s: float | None = None) -> None:
        super().__init__(code)
        self.code, self.retryable, self.wait_s = code, retryable, wait_s


@contextmanager
def _transport_failures() -> Iterator[None]:
    """The upstream client's errors as attempt failures (retryable or not), the same for both modes."""
    try:
        yield
    except UpstreamTimeout:
        raise _Failed("timeout", True) from None
    except UpstreamTooLarge:
        raise _Failed("response_too_large", False) from None
    except EgressDenied:
        raise _Failed("egress_denied", False) from None
    except UpstreamError:
        raise _Failed("connect_error", True) from None


def _check_status(status: int, headers: Mapping[str, str]) -> None:
    """429 and 5xx are retryable (after ``Retry-After`` when sane); other non-2xx are not."""
    if status == 429 or status >= 500:
        raise _Failed(f"http_{status}", True, _retry_after(headers.get("retry-after")))
    if status >= 300 or status < 200:
        raise _Failed(f"http_{status}", False)


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` asks for; None when it is missing or not a finite, sane value.

    A provider may send anything here (``soon``, ``nan``, ``inf``, ``-1``, a date from the year
    9999): what is not a finite number of seconds or a valid HTTP date is ignored (the usual
    backoff applies), never an error of ours.
    """
    if not value or len(value) > 64:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if parsed is None:
            return None
        try:
            seconds = parsed.timestamp() - time.time()
        except (OverflowError, ValueError, OSError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


#: Bodies up to this size are parsed on the event loop; larger ones in a thread (a 4 MiB JSON
#: document takes tens of milliseconds to parse, which would stall every other request).
INLINE_PARSE_BYTES = 64 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(body: bytes) -> Any:
    """Strict JSON: no NaN/Infinity; nesting too deep for the parser is an error, not a crash."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


async def _parse_json(body: bytes, timeout: float) -> Any:
    if len(body) <= INLINE_PARSE_BYTES:
        return _loads(body)
    async with asyncio.timeout(max(timeout, 0.001)):
        return await asyncio.to_thread(_loads, body)


class Cascade:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        keyring: KeyRing,
        vamn: VamnServer,
        cache: ResponseCache | None,
        client: Upstream,
        writer: AccountingWriter | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.keyring = keyring
        self.vamn = vamn
        self.cache = cache
        self.client = client
        self.writer = writer or AccountingWriter(engine, settings)
        self.limiter = RateLimiter()
        self.breakers = CircuitBreakers(settings.circuit_failure_threshold, settings.circuit_cooldown_s)
        self._orgs: dict[uuid.UUID, _OrgState] = {}
        self._loading: dict[uuid.UUID, asyncio.Future[_OrgState]] = {}
        self._generation: dict[uuid.UUID, int] = {}
        self._routing: dict[str, str] | None = None
        self._inflight: dict[tuple[uuid.UUID, str, str], asyncio.Future[None]] = {}
        self._org_slots: dict[uuid.UUID | None, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- cached reads ------------------------------------------------------------------------------
    def invalidate(self, organization_id: uuid.UUID) -> None:
        """Forget the organization's configs; a load already under way will not be kept."""
        self._orgs.pop(organization_id, None)
        self._loading.pop(organization_id, None)
        self._generation[organization_id] = self._generation.get(organization_id, 0) + 1

    def _load_org(self, organization_id: uuid.UUID) -> _OrgState:
        with transaction(self.engine) as session:
            billing_model = session.scalar(
                select(Organization.billing_model).where(Organization.id == organization_id)
            )
            if billing_model is None:
                raise NotFoundError(f"organization {organization_id} does not exist")
            # A fired dead man's switch: its provider keys are not even decrypted.
            blocked = restrictions.of(session, organization_id)
            views = (
                []
                if blocked.providers_disabled
                else configs.views(session, self.keyring, organization_id, time.time())
            )
            if self._routing is None:
                rows = session.execute(select(AgentVamnRouting.agent_slug, AgentVamnRouting.primary_head))
                self._routing = {slug: head for slug, head in rows}
        return _OrgState(time.monotonic(), billing_model, views, not blocked.fallback_disabled)

    async def _org(self, organization_id: uuid.UUID) -> _OrgState:
        """The organization's configs.

        Loaded at most once at a time (concurrent requests share a load). Once they are older than
        ``config_cache_ttl_s`` the next request starts a reload in the background and still uses
        them; requests wait only when there is nothing loaded (first use, after ``invalidate``,
        after a failed reload) or when the TTL is 0.
        """
        state = self._orgs.get(organization_id)
        ttl = self.settings.config_cache_ttl_s
        if state is not None:
            if time.monotonic() - state.loaded_at <= ttl:
                return state
            if ttl > 0:
                self._load(organization_id)
                return state
        return await asyncio.shield(self._load(organization_id))

    def _load(self, organization_id: uuid.UUID) -> asyncio.Future[_OrgState]:
        pending = self._loading.get(organization_id)
        if pending is not None:
            return pending
        generation = self._generation.get(organization_id, 0)
        pending = asyncio.ensure_future(anyio.to_thread.run_sync(self._load_org, organization_id))
        self._loading[organization_id] = pending

        def done(future: asyncio.Future[_OrgState]) -> None:
            if self._loading.get(organization_id) is future:
                del self._loading[organization_id]
            if future.cancelled() or self._generation.get(organization_id, 0) != generation:
                return  # invalidated meanwhile: what this load read may be stale
            if future.exception() is None:
                self._orgs[organization_id] = future.result()
            else:  # the next request loads again, and sees the error if it persists
                self._orgs.pop(organization_id, None)

        pending.add_done_callback(done)
        return pending

    async def agent_slugs(self) -> list[str]:
        """The agents requests may name (``agent_vamn_routing``)."""
        if self._routing is None:

            def read() -> dict[str, str]:
                with transaction(self.engine) as session:
                    rows = session.execute(select(AgentVamnRouting.agent_slug, AgentVamnRouting.primary_head))
                    return {slug: head for slug, head in rows}

            self._routing = await anyio.to_thread.run_sync(read)
        return sorted(self._routing)

    def _check_session(self, request: ChatRequest) -> None:
        with transaction(self.engine) as session:
            row = session.get(AgentSession, request.session_id)
            if row is None or row.organization_id != request.organization_id:
                raise NotFoundError(f"agent session {request.session_id} does not exist in this organization")

    # -- the request -------------------------------------------------------------------------------
    def validate(self, request: ChatRequest) -> None:
        if not request.message.strip():
            raise InvalidInputError("message is empty; send the text the agent should answer")
        if len(request.message) > self.settings.max_message_chars:
            raise InvalidInputError(
                f"message is {len(request.message)} characters long; the limit is {self.settings.max_message_chars}"
            )

    async def chat(self, request: ChatRequest, timing: Timing | None = None) -> dict[str, Any]:
        """Answer ``request``; copies of one (organization, caller, request id) run once.

        Single flight: while a request id is being answered, copies of it that arrive (a client
        retrying, a double submit) wait for the first and answer from what it stored, so the
        provider is called once. Within a process the copies wait on a future; across worker
        processes on the ``llm_inflight`` claim row (``_stored_or_claim``): only the process whose
        claim was inserted calls a provider, the others poll for the stored answer.
        """
        timing = timing or Timing()
        self.validate(request)
        if not request.client_request_id:
            return await self._chat(request, timing)
        stored, future = await self._follow(request)
        if stored is not None:
            return stored
        try:
            return await self._chat(request, timing)
        finally:
            self._led(request, future)

    async def _follow(
        self, request: ChatRequest
    ) -> tuple[dict[str, Any] | None, asyncio.Future[None] | None]:
        """Wait for a copy of the request already running here; then its stored answer, or the lead.

        The lead is a future that copies arriving later wait on; ``_led`` resolves it.
        """
        key = (request.organization_id, request.caller, request.request_id)
        while (leader := self._inflight.get(key)) is not None:
            await asyncio.shield(leader)
            stored = await anyio.to_thread.run_sync(self._stored, request)
            if stored is not None:
                return stored, None
            # The first copy ended before anything was stored (e.g. refused): try it ourselves.
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        return None, future

    def _led(self, request: ChatRequest, future: asyncio.Future[None] | None) -> None:
        if future is None or future.done():
            return
        key = (request.organization_id, request.caller, request.request_id)
        if self._inflight.get(key) is future:
            del self._inflight[key]
        future.set_result(None)

    async def _route(self, request: ChatRequest) -> tuple[_OrgState, str]:
        """The organization's configs and the agent's VAMN head (404 for an unknown agent or session)."""
        state = await self._org(request.organization_id)
        head = (self._routing or {}).get(request.agent_slug)
        if head is None:
            raise NotFoundError(f"agent '{request.agent_slug}' does not exist")
        if request.session_id is not None:
            await anyio.to_thread.run_sync(self._check_session, request)
        return state, head

    async def _chat(self, request: ChatRequest, timing: Timing) -> dict[str, Any]:
        state, head = await self._route(request)
        claim_id: uuid.UUID | None = None
        if request.client_request_id:
            stored, claim_id = await self._stored_or_claim(request)
            if stored is not None:
                return stored
        answer = await self._answer(request, state, head, claim_id, timing)
        assert isinstance(answer, dict)
        return answer

    async def chat_stream(
        self, request: ChatRequest, timing: Timing | None = None
    ) -> AsyncGenerator[str | dict[str, Any], None]:
        """Answer ``request`` as it is generated: text pieces, then the response (as ``chat``'s).

        A tenant provider (or the fallback) that streams (``streaming.STREAMING``) is passed
        through delta by delta; other tiers, stored and cached answers come as one piece. Tiers
        fail over only until the first piece is out. A stream cut short (the consumer stopped,
        the provider broke off, the deadline passed) is accounted for what was received, by the
        rule of ``orchestrator.streaming``, with usage status ``partial``; the provider's stream
        is closed. Errors before the first piece raise as ``chat``'s do.
        """
        timing = timing or Timing()
        self.validate(request)
        future: asyncio.Future[None] | None = None
        if request.client_request_id:
            stored, future = await self._follow(request)
            if stored is not None:
                yield stored["content"]
                yield stored
                return
        handed_off = False
        try:
            state, head = await self._route(request)
            claim_id: uuid.UUID | None = None
            if request.client_request_id:
                stored, claim_id = await self._stored_or_claim(request)
                if stored is not None:
                    yield stored["content"]
                    yield stored
                    return
            answer = await self._answer(request, state, head, claim_id, timing, stream=True)
            if isinstance(answer, dict):
                yield answer["content"]
                yield answer
                return
            handed_off = True  # from here ``_settle`` ends the lead
            parts: list[str] = []
            end: str | None = None
            try:
                if answer.first:
                    parts.append(answer.first)
                    yield answer.first
                async for text in answer.rest():
                    parts.append(text)
                    yield text
            except TimeoutError:
                end = "timeout"
            except UpstreamTooLarge:
                end = "response_too_large"
            except UpstreamError:
                end = "stream_broken"
            except adapters.MalformedReplyError:
                end = "bad_response"
            except BaseException:  # cancelled or closed: the consumer went away; account in the background
                self._background(self._settle(request, answer, parts, CLIENT_DISCONNECTED, future))
                raise
            yield await self._settle(request, answer, parts, end, future)
        finally:
            if not handed_off:
                self._led(request, future)

    def _background(self, work: Any) -> None:
        """Run ``work`` (closing or accounting a stream whose consumer is gone) in its own task."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("background stream work failed: %s", type(exc).__name__)

    async def _settle(
        self,
        request: ChatRequest,
        live: _Live,
        parts: list[str],
        end: str | None,
        future: asyncio.Future[None] | None,
    ) -> dict[str, Any]:
        """Close the provider's stream and account for it: exact usage, or counted when cut short."""
        try:
            try:
                await live.stream.aclose()
            except Exception as exc:  # the connection is dropped either way
                log.info("stream close failed: %s", type(exc).__name__)
            finally:
                live.release()
            input_tokens, output_tokens, exact = live.reader.usage(count_tokens(request.message))
            row, outcome = live.row, live.outcome
            assert row is not None and outcome is not None
            row.input_tokens, row.output_tokens = input_tokens, output_tokens
            row.latency_ms = int((time.perf_counter() - live.started) * 1000)
            if end is not None:
                row.status, row.error_code = "partial", end
            elif not exact:  # complete, but the provider sent no usage: counted by the rule
                row.error_code = "usage_counted"
            reply = adapters.Reply("".join(parts), input_tokens, output_tokens)
            cost = None
            if live.is_fallback:
                cost = accounting.price(self.settings, live.model_id, input_tokens, output_tokens)
                row.estimated_cost_usd = cost
                outcome.billed_tokens = input_tokens + output_tokens
                outcome.billed_cost = cost
            response = self._response(reply, live.provider, live.model_id, row, live.is_fallback, cost)
            outcome.status, outcome.response = "success", response
            return await self._finish(
                request, outcome, response, live.health, live.deadline, live.key if end is None else None
            )
        finally:
            self._led(request, future)

    async def _stored_or_claim(self, request: ChatRequest) -> tuple[dict[str, Any] | None, uuid.UUID | None]:
        """The stored answer, or this process's claim on the request id (waits while another has it).

        Another worker process answering the same (organization, caller, request id) holds its
        ``llm_inflight`` row: this copy polls (10 ms, doubling to 250 ms) for the stored answer, for
        at most the cascade deadline plus ``INFLIGHT_GRACE_S``, and never calls a provider itself
        unless the other claim is released without an answer or goes stale.
        """
        give_up = time.monotonic() + self.settings.cascade_deadline_s + INFLIGHT_GRACE_S
        delay = 0.01
        while True:
            stored, claim_id = await self._read_or_claim_shielded(request)
            if stored is not None or claim_id is not None:
                return stored, claim_id
            if time.monotonic() >= give_up:
                raise ConflictError(
                    f"request id {request.request_id} is still being answered by another worker; "
                    "retry it later"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _read_or_claim_shielded(
        self, request: ChatRequest
    ) -> tuple[dict[str, Any] | None, uuid.UUID | None]:
        """``_read_or_claim`` in a thread; cancelled meanwhile (the client left), a claim it took is
        released once the thread is done (a cancelled wait does not stop the thread)."""
        work = asyncio.ensure_future(anyio.to_thread.run_sync(self._read_or_claim, request))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:

            def release(done: asyncio.Future[tuple[dict[str, Any] | None, uuid.UUID | None]]) -> None:
                if not done.cancelled() and done.exception() is None and (claim := done.result()[1]):
                    self._release_later(request, claim)

            work.add_done_callback(release)
            raise

    def _read_or_claim(self, request: ChatRequest) -> tuple[dict[str, Any] | None, uuid.UUID | None]:
        stale_before = utcnow() - timedelta(seconds=self.settings.cascade_deadline_s + INFLIGHT_GRACE_S)
        with transaction(self.engine) as session:
            stored = self._stored_in(session, request)
            if stored is not None:
                return stored, None
            claim_id = accounting.claim(
                session, request.organization_id, request.caller, request.request_id, stale_before
            )
            return None, claim_id

    def _release_later(self, request: ChatRequest, claim_id: uuid.UUID) -> None:
        """Drop the claim of a request that ended without storing an outcome (in the background)."""

        def release() -> None:
            try:
                with transaction(self.engine) as session:
                    accounting.release(
                        session, request.organization_id, request.caller, request.request_id, claim_id
                    )
            except Exception as exc:  # it goes stale and is taken over; nothing else to do
                log.warning("inflight release failed: %s", type(exc).__name__)

        asyncio.get_running_loop().run_in_executor(None, release)

    async def _answer(
        self,
        request: ChatRequest,
        state: _OrgState,
        head: str,
        claim_id: uuid.UUID | None,
        timing: Timing,
        stream: bool = False,
    ) -> dict[str, Any] | _Live:
        """The cascade's answer to ``request`` (streamed: the live stream, once its first piece came).

        When this raises (cancelled, refused, the database failed), the claim on the request id
        (``claim_id``) is released in the background (a no-op if the outcome that carried it was
        stored: that releases it in its own transaction), except for a stream cut short before its
        first piece, whose outcome, still to be written by ``_cut_short``, releases it.
        """
        handed: list[bool] = []
        try:
            return await self._cascade(request, state, head, claim_id, timing, stream, handed)
        except BaseException:
            if claim_id is not None and not handed:
                self._release_later(request, claim_id)
            raise

    async def _cascade(
        self,
        request: ChatRequest,
        state: _OrgState,
        head: str,
        claim_id: uuid.UUID | None,
        timing: Timing,
        stream: bool,
        handed: list[bool],
    ) -> dict[str, Any] | _Live:
        """``_answer``'s work; appends to ``handed`` when an outcome carrying the claim is being written."""
        eligible = [
            c for c in state.configs if c.workspace_id is None or c.workspace_id == request.workspace_id
        ]
        key = None
        if self.cache is not None:
            chain = [f"{c.target.provider}/{c.target.model_id}" for c in eligible]
            chain.append(f"vamn/{head}")
            if state.fallback_allowed:
                chain.append(f"{self.settings.fallback_provider}/{self.settings.fallback_model}")
            key = cache_key(
                request.organization_id,
                request.agent_slug,
                chain,
                request.message,
                request.max_tokens or 0,
                request.temperature if request.temperature is not None else -1.0,
            )
            hit = await self.cache.get(key)
            if hit is not None:
                return await self._answer_from_cache(request, hit, claim_id)
        outcome = Outcome(
            organization_id=request.organization_id,
            request_id=request.request_id,
            agent_slug=request.agent_slug,
            session_id=request.session_id,
            user_id=request.user_id,
            status="failed",
            response=None,
            usage=[],
            vamn=[],
            caller=request.caller,
            # Only a client's id can be reused; a generated one needs no hash.
            request_hash=request.request_hash if request.client_request_id else None,
            claim_id=claim_id,
        )
        deadline = time.monotonic() + self.settings.cascade_deadline_s
        health: dict[uuid.UUID, str] = {}
        # The tenant tier stops early enough to leave the fallback its reserve.
        tenant_deadline = deadline - self.fallback_reserve_s()
        try:
            response = await self._tenant_tier(
                request, eligible, outcome, tenant_deadline, health, timing, stream
            )
            if response is None:
                response = await self._vamn_tier(request, head, outcome, timing)
            if response is None and state.fallback_allowed:
                response = await self._fallback_tier(request, outcome, deadline, timing, stream)
        except asyncio.CancelledError:
            # A streamed request's client left before its first piece (the door cancels the
            # request): what the providers were sent is accounted all the same.
            if stream and outcome.usage:
                handed.append(True)
                self._background(self._cut_short(request, outcome, health))
            raise
        if isinstance(response, _Live):  # accounted by ``_settle`` once the stream ends
            response.outcome, response.health, response.key = outcome, health, key
            response.deadline = deadline
            return response
        if response is not None:
            outcome.status, outcome.response = "success", response
        return await self._finish(request, outcome, response, health, deadline, key)

    async def _cut_short(self, request: ChatRequest, outcome: Outcome, health: dict[uuid.UUID, str]) -> None:
        """Account a streamed request whose client left before its first piece (in the background).

        The attempt under way is the usage row ``partial`` / ``client_disconnected`` (``_attempts``),
        counted by the rule of ``orchestrator.streaming`` and, for the fallback, billed. The request
        id's outcome is ``client_disconnected`` with no answer: a copy sent later is told so (409).
        """
        for row in outcome.usage:
            if row.is_fallback and row.status == "partial":
                cost = accounting.price(self.settings, row.model_id, row.input_tokens, row.output_tokens)
                row.estimated_cost_usd = cost
                outcome.billed_tokens, outcome.billed_cost = row.input_tokens + row.output_tokens, cost
        outcome.status = CLIENT_DISCONNECTED
        try:
            await self.writer.write(outcome, health)
        except accounting.DuplicateRequest:
            log.info("request %s was accounted already", request.request_id)
        if health:
            self.invalidate(request.organization_id)

    async def _finish(
        self,
        request: ChatRequest,
        outcome: Outcome,
        response: dict[str, Any] | None,
        health: dict[uuid.UUID, str],
        deadline: float,
        key: str | None,
    ) -> dict[str, Any]:
        """Write the outcome (answering once it committed), then cache the answer or raise."""
        try:
            await self.writer.write(outcome, health)
        except accounting.DuplicateRequest:
            stored = await anyio.to_thread.run_sync(self._stored, request)
            if stored is not None:
                return stored
            raise UpstreamUnavailableError(
                "the request id was already used by a request that failed"
            ) from None
        if health:
            self.invalidate(request.organization_id)
        if response is None:
            if time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"no provider answered within ACCUTE_CASCADE_DEADLINE_S ({self.settings.cascade_deadline_s}s)"
                )
            raise UpstreamUnavailableError(
                "no provider could answer (tenant providers, VAMN and the fallback failed)"
            )
        if self.cache is not None and key is not None:
            await self.cache.set(key, response)
        return response

    def _stored(self, request: ChatRequest) -> dict[str, Any] | None:
        with transaction(self.engine) as session:
            return self._stored_in(session, request)

    @staticmethod
    def _stored_in(session: Session, request: ChatRequest) -> dict[str, Any] | None:
        row = accounting.stored_response(session, request.organization_id, request.request_id, request.caller)
        if row is None:
            return None
        if row.agent_slug != request.agent_slug or (
            row.request_hash is not None and row.request_hash != request.request_hash
        ):
            raise ConflictError(
                f"request id {request.request_id} was used for a different request; send a new request id"
            )
        if row.response_json is None and row.status == CLIENT_DISCONNECTED:
            raise ConflictError(
                f"request {request.request_id} was cut short: its client disconnected before the "
                "answer began; send a new request id"
            )
        if row.response_json is None:
            raise UpstreamUnavailableError(
                f"request {request.request_id} failed earlier; retry with a new request id"
            )
        return dict(row.response_json)

    def close(self) -> None:
        """Write the accounting still queued and stop the writer (the service's shutdown)."""
        self.writer.close()

    async def _answer_from_cache(
        self, request: ChatRequest, hit: dict[str, Any], claim_id: uuid.UUID | None = None
    ) -> dict[str, Any]:
        response = {
            **hit,
            "cache_hit": True,
            "input_tokens": 0,
            "output_tokens": 0,
            "estimated_cost": 0.0,
            "latency_ms": 0,
        }
        outcome = Outcome(
            organization_id=request.organization_id,
            request_id=request.request_id,
            agent_slug=request.agent_slug,
            session_id=request.session_id,
            user_id=request.user_id,
            status="success",
            response=response,
            usage=[
                UsageRow(
                    provider=str(hit["provider"]),
                    model_id=str(hit["model_id"]),
                    status="success",
                    cache_hit=True,
                )
            ],
            vamn=[],
            caller=request.caller,
            # Only a client's id can be reused; a generated one needs no hash.
            request_hash=request.request_hash if request.client_request_id else None,
            claim_id=claim_id,
        )
        try:
            await self.writer.write(outcome)
        except accounting.DuplicateRequest:
            stored = await anyio.to_thread.run_sync(self._stored, request)
            return stored if stored is not None else response
        return response

    # -- tiers -------------------------------------------------------------------------------------
    async def _tenant_tier(
        self,
        request: ChatRequest,
        eligible: list[configs.ConfigView],
        outcome: Outcome,
        deadline: float,
        health: dict[uuid.UUID, str],
        timing: Timing,
        stream: bool = False,
    ) -> dict[str, Any] | _Live | None:
        words = count_tokens(request.message)
        for config in eligible:
            if time.monotonic() >= deadline:
                return None
            if not self.breakers.allow(config.id, config.unhealthy_for_s):
                continue
            max_tokens = min(
                request.max_tokens or config.max_tokens or DEFAULT_MAX_TOKENS,
                config.max_tokens or DEFAULT_MAX_TOKENS,
            )
            # What this request may cost the tpm window: its words and all it may generate.
            estimate = words + max_tokens
            if not self.limiter.try_acquire(config.id, config.rpm, config.tpm, estimate):
                self.breakers.release(config.id)
                log.info("skip config=%s reason=rate_limited", config.id)
                continue
            temperature = (
                request.temperature
                if request.temperature is not None
                else (config.temperature if config.temperature is not None else DEFAULT_TEMPERATURE)
            )
            rows: list[UsageRow] = []
            try:
                reply = await self._call(
                    config.target,
                    request.message,
                    max_tokens,
                    temperature,
                    deadline,
                    timing,
                    rows,
                    organization_id=request.organization_id,
                    stream=stream,
                )
            except asyncio.CancelledError:  # says nothing of the provider's health: free a trial
                self.breakers.release(config.id)
                raise
            finally:  # the attempts sent so far are accounted, even when cancelled
                for row in rows:
                    row.llm_config_id = config.id
                outcome.usage.extend(rows)
            if isinstance(reply, _Live):  # what a stream uses is known at its end: keep the estimate
                used = estimate
            else:
                used = reply.input_tokens + reply.output_tokens if reply is not None else 0
            self.limiter.settle(config.id, estimate, used)
            if reply is None:
                if not rows:
                    self.breakers.release(config.id)
                    continue
                if self.breakers.failure(config.id):
                    health[config.id] = "unhealthy"
                    log.warning("circuit opened config=%s", config.id)
                continue
            if self.breakers.success(config.id) or config.health_status != "healthy":
                health[config.id] = "healthy"
                config.health_status = "healthy"
            if isinstance(reply, _Live):
                reply.provider, reply.model_id = config.target.provider, config.target.model_id
                return reply
            return self._response(
                reply, config.target.provider, config.target.model_id, rows[-1], False, None
            )
        return None

    async def _vamn_tier(
        self, request: ChatRequest, head: str, outcome: Outcome, timing: Timing
    ) -> dict[str, Any] | None:
        started = time.perf_counter()

        def serve() -> tuple[str, str] | None:
            with transaction(self.engine) as session:
                model = self.vamn.model_for(session, head)
            if model is None:
                return None
            return model.model_id, model.answer(request.message)

        try:
            served = await anyio.to_thread.run_sync(serve)
        except Exception as exc:  # a broken model must not break the cascade: log it, fall through
            timing.upstream_s += time.perf_counter() - started
            latency = int((time.perf_counter() - started) * 1000)
            outcome.vamn.append(
                VamnRow(head, count_tokens(request.message), 0, latency, "error", type(exc).__name__)
            )
            log.warning("vamn head=%s error=%s", head, type(exc).__name__)
            return None
        timing.upstream_s += time.perf_counter() - started
        if served is None:
            return None
        model_id, content = served
        latency = int((time.perf_counter() - started) * 1000)
        input_tokens, output_tokens = count_tokens(request.message), count_tokens(content)
        outcome.vamn.append(VamnRow(head, input_tokens, output_tokens, latency, "success"))
        row = UsageRow("vamn", model_id, "success", input_tokens, output_tokens, latency)
        outcome.usage.append(row)
        return self._response(
            adapters.Reply(content, input_tokens, output_tokens), "vamn", model_id, row, False, None
        )

    def fallback_target(self) -> adapters.Target | None:
        key = self.settings.fallback_api_key.get_secret_value() if self.settings.fallback_api_key else None
        provider = self.settings.fallback_provider
        if key is None and provider not in adapters.KEY_OPTIONAL:
            return None
        if self.settings.fallback_api_endpoint is None and provider not in adapters.DEFAULT_ENDPOINTS:
            return None
        return adapters.Target(
            provider, self.settings.fallback_model, self.settings.fallback_api_endpoint, key, {}
        )

    async def _fallback_tier(
        self, request: ChatRequest, outcome: Outcome, deadline: float, timing: Timing, stream: bool = False
    ) -> dict[str, Any] | _Live | None:
        target = self.fallback_target()
        if target is None:
            return None
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        temperature = request.temperature if request.temperature is not None else DEFAULT_TEMPERATURE
        rows: list[UsageRow] = []
        try:
            reply = await self._call(
                target,
                request.message,
                max_tokens,
                temperature,
                deadline,
                timing,
                rows,
                guarded=False,
                organization_id=request.organization_id,
                stream=stream,
            )
        finally:  # the attempts sent so far are accounted, even when cancelled
            for row in rows:
                row.provider, row.is_fallback = FALLBACK_PROVIDER_NAME, True
            outcome.usage.extend(rows)
        if reply is None:
            return None
        if isinstance(reply, _Live):  # billed by ``_settle`` for what the stream carried
            reply.provider, reply.model_id, reply.is_fallback = FALLBACK_PROVIDER_NAME, target.model_id, True
            return reply
        cost = accounting.price(self.settings, target.model_id, reply.input_tokens, reply.output_tokens)
        rows[-1].estimated_cost_usd = cost
        outcome.billed_tokens = reply.input_tokens + reply.output_tokens
        outcome.billed_cost = cost
        return self._response(reply, FALLBACK_PROVIDER_NAME, target.model_id, rows[-1], True, cost)

    @staticmethod
    def _response(
        reply: adapters.Reply,
        provider: str,
        model_id: str,
        row: UsageRow,
        is_fallback: bool,
        cost: Decimal | None,
    ) -> dict[str, Any]:
        return {
            "content": reply.content,
            "provider": provider,
            "model_id": model_id,
            "is_fallback": is_fallback,
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "latency_ms": row.latency_ms,
            "estimated_cost": float(cost) if cost is not None else 0.0,
            "cache_hit": False,
        }

    # -- one provider, with retries ----------------------------------------------------------------
    async def _call(
        self,
        target: adapters.Target,
        message: str,
        max_tokens: int,
        temperature: float,
        deadline: float,
        timing: Timing,
        rows: list[UsageRow],
        guarded: bool = True,
        organization_id: uuid.UUID | None = None,
        stream: bool = False,
    ) -> adapters.Reply | _Live | None:
        """Up to ``retry_max_attempts`` attempts, each appended to ``rows`` once sent; ``guarded``:
        the egress policy applies (tenants).

        The attempts hold one of the organization's ``ACCUTE_ORG_MAX_CONCURRENCY`` slots (a
        bulkhead: one tenant's flood of requests to a hanging provider cannot take every
        connection); waiting for it counts against ``deadline``, and a request that gets none in
        time skips this provider without sending anything.
        """
        slot = self._org_slot(organization_id)
        if slot.locked():  # only a full bulkhead needs a timer
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    await slot.acquire()
            except TimeoutError:
                log.info("skip provider=%s reason=organization_busy", target.provider)
                return None
        else:
            await slot.acquire()
        try:
            reply = await self._attempts(
                target, message, max_tokens, temperature, deadline, timing, rows, guarded, stream
            )
        except BaseException:
            slot.release()
            raise
        if isinstance(reply, _Live):  # a stream keeps its slot until ``_settle`` closes it
            reply.release = slot.release
        else:
            slot.release()
        return reply

    def _org_slot(self, organization_id: uuid.UUID | None) -> asyncio.Semaphore:
        slot = self._org_slots.get(organization_id)
        if slot is None:
            if len(self._org_slots) >= 10_000:  # forget organizations nobody is waiting on
                self._org_slots = {k: v for k, v in self._org_slots.items() if v.locked() or v._waiters}
            slot = self._org_slots[organization_id] = asyncio.Semaphore(self.settings.org_max_concurrency)
        return slot

    def fallback_reserve_s(self) -> float:
        """Seconds of the deadline kept for the fallback: the tenant tier must stop before them.

        One provider attempt's timeout, but at most a third of the deadline (so the tenant tier
        always has two thirds). With the defaults (60 s deadline, 30 s attempts) the tenant
        providers get 40 s and the fallback at least 20 s: a hanging tenant provider can no longer
        use up the whole deadline.
        """
        if self.fallback_target() is None:
            return 0.0
        return min(self.settings.provider_timeout_s, self.settings.cascade_deadline_s / 3)

    async def _attempts(
        self,
        target: adapters.Target,
        message: str,
        max_tokens: int,
        temperature: float,
        deadline: float,
        timing: Timing,
        rows: list[UsageRow],
        guarded: bool,
        stream: bool = False,
    ) -> adapters.Reply | _Live | None:
        """The attempts at one provider, each appended to ``rows``.

        An attempt of a streamed request that is cancelled (its client left before the first
        piece) is the row ``partial`` / ``client_disconnected``, counted by the rule of
        ``orchestrator.streaming`` from what the provider had sent.
        """
        call = adapters.build(target, message, max_tokens, temperature)
        streamed = stream and target.provider in streaming.STREAMING
        for attempt in range(self.settings.retry_max_attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            started = time.perf_counter()
            sent_at = utcnow()
            timeout = min(self.settings.provider_timeout_s, remaining)
            reader = streaming.StreamReader(target.provider) if streamed else None
            try:
                if reader is None:
                    reply: adapters.Reply | _Live = await self._send(target.provider, call, timeout, guarded)
                else:
                    reply = await self._open(target.provider, call, timeout, guarded, reader)
            except asyncio.CancelledError:
                if stream:
                    words = count_tokens(message)
                    input_tokens, output_tokens, _ = reader.usage(words) if reader else (words, 0, False)
                    rows.append(
                        UsageRow(
                            target.provider,
                            target.model_id,
                            "partial",
                            input_tokens,
                            output_tokens,
                            int((time.perf_counter() - started) * 1000),
                            error_code=CLIENT_DISCONNECTED,
                            created_at=sent_at,
                        )
                    )
                raise
            except _Failed as failed:
                timing.upstream_s += time.perf_counter() - started
                latency = int((time.perf_counter() - started) * 1000)
                rows.append(
                    UsageRow(
                        target.provider,
                        target.model_id,
                        "error",
                        latency_ms=latency,
                        error_code=failed.code,
                        created_at=sent_at,
                    )
                )
                log.info(
                    "attempt provider=%s model=%s status=error code=%s",
                    target.provider,
                    target.model_id,
                    failed.code,
                )
                if not failed.retryable or attempt + 1 >= self.settings.retry_max_attempts:
                    break
                backoff = self.settings.retry_backoff_s * (2**attempt) * (0.5 + random.random() / 2)
                wait = failed.wait_s if failed.wait_s is not None else backoff
                if wait > self.settings.retry_backoff_max_s or time.monotonic() + wait >= deadline:
                    break
                await asyncio.sleep(wait)
                continue
            timing.upstream_s += time.perf_counter() - started
            latency = int((time.perf_counter() - started) * 1000)
            rows.append(
                UsageRow(
                    target.provider,
                    target.model_id,
                    "success",
                    reply.input_tokens,
                    reply.output_tokens,
                    latency,
                    created_at=sent_at,
                )
            )
            if isinstance(reply, _Live):
                reply.row, reply.started = rows[-1], started
            log.info(
                "attempt provider=%s model=%s status=success latency_ms=%d",
                target.provider,
                target.model_id,
                latency,
            )
            return reply
        return None

    async def _send(
        self, provider: str, call: adapters.HttpCall, timeout: float, guarded: bool
    ) -> adapters.Reply:
        """One attempt: the exchange, decoding and parsing all within ``timeout``."""
        started = time.monotonic()
        with _transport_failures():
            response = await self.client.post_json(
                call.url, call.body, call.headers, timeout, guarded=guarded
            )
        _check_status(response.status, response.headers)
        try:
            body = await _parse_json(response.body, timeout - (time.monotonic() - started))
        except TimeoutError:
            raise _Failed("timeout", False) from None
        except ValueError:
            raise _Failed("bad_response", False) from None
        try:
            return adapters.parse(provider, body)
        except adapters.MalformedReplyError:
            raise _Failed("bad_response", False) from None

    async def _open(
        self,
        provider: str,
        call: adapters.HttpCall,
        timeout: float,
        guarded: bool,
        reader: streaming.StreamReader,
    ) -> adapters.Reply | _Live:
        """One streamed attempt, up to its first piece of text (or a whole reply, if that came);
        ``reader`` reads the provider's events."""
        call = streaming.stream_call(provider, call)
        started = time.monotonic()
        with _transport_failures():
            stream = await self.client.open_stream(
                call.url, call.body, call.headers, timeout, guarded=guarded
            )
        try:
            _check_status(stream.status, stream.headers)
            async with asyncio.timeout(max(timeout - (time.monotonic() - started), 0.0)):
                if "text/event-stream" not in stream.headers.get("content-type", "").lower():
                    body = await stream.read_all()  # the provider answered whole: as ``_send``
                    reply = adapters.parse(provider, await _parse_json(body, timeout))
                    await stream.aclose()
                    return reply
                events = streaming.events(stream.chunks())
                first = ""
                async for data in events:
                    first = reader.feed(data)
                    if first or reader.finished:
                        break
            return _Live(stream, reader, events, first, self.settings.provider_timeout_s)
        except _Failed:
            await stream.aclose()
            raise
        except TimeoutError:
            await stream.aclose()
            raise _Failed("timeout", True) from None
        except UpstreamTooLarge:
            await stream.aclose()
            raise _Failed("response_too_large", False) from None
        except UpstreamError:
            await stream.aclose()
            raise _Failed("connect_error", True) from None
        except (adapters.MalformedReplyError, ValueError):
            await stream.aclose()
            raise _Failed("bad_response", False) from None
        except BaseException:  # cancelled: close it without waiting here
            self._background(stream.aclose())
            raise


def _nothing() -> None:
    return None


@dataclass(eq=False)
class _Live:
    """A provider's answer while it streams: its first piece is read, the rest comes from ``rest``."""

    stream: UpstreamStream
    reader: streaming.StreamReader
    events: AsyncIterator[str]
    first: str
    idle_s: float
    """The longest wait for the next event (the provider timeout)."""
    input_tokens: int = 0
    output_tokens: int = 0
    row: UsageRow | None = None
    started: float = 0.0
    provider: str = ""
    model_id: str = ""
    is_fallback: bool = False
    outcome: Outcome | None = None
    health: dict[uuid.UUID, str] = field(default_factory=dict)
    key: str | None = None
    deadline: float = math.inf
    release: Callable[[], None] = _nothing
    """Gives back the organization's slot (``_call``) once the stream is closed."""

    async def rest(self) -> AsyncIterator[str]:
        """The remaining pieces; ``TimeoutError`` when a wait passes ``idle_s`` or the deadline."""
        events = self.events
        while True:
            wait = min(self.idle_s, self.deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                data = await anext(events, None)
            if data is None:
                return
            if self.reader.finished:
                continue  # after the end: read on to the body's end, so the connection is reused
            text = self.reader.feed(data)
            if text:
                yield text
