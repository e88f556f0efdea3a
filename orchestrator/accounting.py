"""Usage and billing: every chat request's outcome is written exactly once, in one transaction.

``record_batch`` writes the outcomes of many requests in one transaction (the service's group
commit, ``orchestrator.writer``); ``record`` is the same for one outcome. Each request's
``llm_requests`` row goes first (ON CONFLICT DO NOTHING on its (organization, request id)); a
request whose row already existed, or appears twice in the batch, was already accounted for and
nothing of it is written — a repeated or concurrent duplicate is never counted twice. The others
get an ``llm_usage_log`` row per attempt (errors included), their ``vamn_inference_log`` rows, and
for a successful fallback answer an atomic upsert of the month's ``fallback_billing`` row (INSERT …
ON CONFLICT … DO UPDATE with increments, on PostgreSQL and SQLite alike), so concurrent requests
and processes never lose an update. Those upserts report the month's figures to the hub
(``accute.llm.fallback.billed``) at most once per organization and interval, in the same
transaction (``orchestrator.billing_events``).

Charges by ``organizations.billing_model``: ``pay_as_you_go`` pays the list price;
``unlimited_tier`` pays nothing per request (tokens still counted); ``token_bundle`` and ``hybrid``
draw the month's ``bundle_tokens_remaining`` (starting at ``ACCUTE_TOKEN_BUNDLE_TOKENS``) and pay
the list price for the share of a request beyond it.

Money is exact ``Decimal`` end to end and rounded once, per invoice line: a request's charge is its
unrounded list price (tokens x price per 1M / 1M); the month's charges add up exactly in
``fallback_billing.total_cost_exact_usd`` (12 decimals); the invoice line
``total_cost_usd`` is always that exact sum rounded half up to 4 decimals (``invoice_line``), so
100 requests of $0.0000135 bill $0.0014, not 100 x $0.0000. ``llm_usage_log.estimated_cost_usd``
is a per-attempt log with the column's 6 decimals (display only; never summed into a bill).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator import billing_events
from schema.config import Settings
from schema.models import (
    FallbackBilling,
    LlmInflight,
    LlmRequest,
    LlmUsageLog,
    Organization,
    TenantLlmConfig,
    VamnInferenceLog,
)
from schema.timeutil import iso, utcnow

MILLION = Decimal(1_000_000)
USAGE_PLACES = Decimal("0.000001")
BILLING_PLACES = Decimal("0.0001")


def price(settings: Settings, model_id: str, input_tokens: int, output_tokens: int) -> Decimal:
    """List price in USD of a call, from the price table (per 1M input/output tokens)."""
    table = settings.price_table
    entry = table.get(model_id) or table.get("default") or {"input": 0.0, "output": 0.0}
    # Exact: the prices' decimal text, integer tokens, and a division by 10^6 (which terminates).
    return (
        Decimal(input_tokens) * Decimal(str(entry.get("input", 0.0)))
        + Decimal(output_tokens) * Decimal(str(entry.get("output", 0.0)))
    ) / MILLION


def invoice_line(exact: Decimal) -> Decimal:
    """The rounding rule, applied once per invoice line: half up to 4 decimals (1/100 of a cent)."""
    return exact.quantize(BILLING_PLACES, rounding=ROUND_HALF_UP)


def billing_period(today: date) -> tuple[date, date]:
    start = today.replace(day=1)
    end = date(start.year + 1, 1, 1) if start.month == 12 else date(start.year, start.month + 1, 1)
    return start, end


@dataclass
class UsageRow:
    """One attempt (``llm_usage_log`` row)."""

    provider: str
    model_id: str
    status: str
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: int = 0
    is_fallback: bool = False
    estimated_cost_usd: Decimal | None = None
    error_code: str | None = None
    cache_hit: bool = False
    llm_config_id: uuid.UUID | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class VamnRow:
    head_type: str
    input_tokens: int
    output_tokens: int
    latency_ms: int
    status: str
    error_message: str | None = None


@dataclass
class Outcome:
    organization_id: uuid.UUID
    request_id: str
    agent_slug: str
    session_id: uuid.UUID | None
    user_id: uuid.UUID | None
    status: str
    response: dict[str, Any] | None
    usage: list[UsageRow]
    vamn: list[VamnRow]
    billed_tokens: int = 0
    billed_cost: Decimal | None = None
    caller: str = ""
    """SHA-256 of the caller's token subject: request ids are idempotent per caller."""
    request_hash: str | None = None
    claim_id: uuid.UUID | None = None
    """This process's ``llm_inflight`` claim on the request id, released with the outcome."""


class DuplicateRequest(Exception):
    """The request id was already accounted for; the caller answers from storage."""


def _insert(bind: Session | Connection) -> Any:
    dialect = bind.dialect if isinstance(bind, Connection) else bind.get_bind().dialect
    return postgresql.insert if dialect.name == "postgresql" else sqlite.insert


def record(session: Session, settings: Settings, outcome: Outcome) -> None:
    """Write the outcome of one request (raises ``DuplicateRequest`` if it was already written)."""
    if not record_batch(session.connection(), settings, [outcome])[0]:
        raise DuplicateRequest(outcome.request_id)


def record_batch(
    connection: Connection,
    settings: Settings,
    outcomes: Sequence[Outcome],
    reporter: billing_events.FallbackBilledReporter | None = None,
) -> list[bool]:
    """Write the outcomes of many requests in the connection's open transaction (group commit).

    Returns, per outcome, whether it was written. ``False``: its (organization, request id) was
    already accounted for, by an earlier transaction or by an earlier outcome of this batch, and
    nothing of it was written. The ``llm_requests`` claims go first, in one
    ``INSERT … ON CONFLICT DO NOTHING RETURNING id``; only the claims that came back get their
    usage, VAMN and billing rows. Rows that other transactions may also lock (claims, billing rows)
    are written in a fixed order, so concurrent batches of several processes cannot deadlock.
    ``reporter`` throttles the hub's billing events (the process's own unless a test passes one).
    """
    if not outcomes:
        return []
    claims: dict[tuple[uuid.UUID, str, str], tuple[int, uuid.UUID]] = {}
    for index, outcome in enumerate(outcomes):
        claims.setdefault((outcome.organization_id, outcome.caller, outcome.request_id), (index, new_id()))
    rows = [
        {
            "id": claim_id,
            "organization_id": org,
            "caller": caller,
            "request_id": request_id,
            "request_hash": outcomes[index].request_hash,
            "agent_slug": outcomes[index].agent_slug,
            "status": outcomes[index].status,
            "response_json": outcomes[index].response,
        }
        for (org, caller, request_id), (index, claim_id) in sorted(
            claims.items(), key=lambda c: (str(c[0][0]), c[0][1], c[0][2])
        )
    ]
    # One cached statement run for many rows (SQLAlchemy's "insertmanyvalues" sends them as
    # multi-row VALUES): no per-batch compilation.
    inserted = set(connection.execute(_claim_statement(connection), rows).scalars())
    written = [False] * len(outcomes)
    for index, claim_id in claims.values():
        written[index] = claim_id in inserted
    accepted = [outcome for outcome, ok in zip(outcomes, written, strict=True) if ok]
    usage = [_usage_values(outcome, row) for outcome in accepted for row in outcome.usage]
    if usage:
        connection.execute(insert(LlmUsageLog), usage)
    vamn = [_vamn_values(outcome, row) for outcome in accepted for row in outcome.vamn]
    if vamn:
        connection.execute(insert(VamnInferenceLog), vamn)
    charges = [
        (outcome.organization_id, outcome.billed_tokens, outcome.billed_cost)
        for outcome in accepted
        if outcome.billed_cost is not None
    ]
    if charges:
        _charge_all(connection, settings, charges)
    reporter = reporter or billing_events.REPORTER
    if charges or reporter.has_due():
        reporter.after_batch(connection, settings, {c[0] for c in charges}, billing_period(utcnow().date()))
    released = sorted(
        (
            {"o": o.organization_id, "c": o.caller, "r": o.request_id, "k": o.claim_id}
            for o in outcomes
            if o.claim_id is not None
        ),
        key=lambda v: (str(v["o"]), v["c"], v["r"]),
    )
    if released:
        connection.execute(_RELEASE, released)
    return written


_RELEASE = delete(LlmInflight).where(
    and_(
        LlmInflight.organization_id == bindparam("o"),
        LlmInflight.caller == bindparam("c"),
        LlmInflight.request_id == bindparam("r"),
        LlmInflight.claim_id == bindparam("k"),
    )
)


def claim(
    session: Session,
    organization_id: uuid.UUID,
    caller: str,
    request_id: str,
    stale_before: datetime,
) -> uuid.UUID | None:
    """Claim the request id for this process (cross-process single flight); None: someone has it.

    An ``INSERT … ON CONFLICT DO NOTHING`` on the id's primary key: of concurrent claims in any
    number of processes exactly one returns a row. A claim older than ``stale_before`` belongs to a
    process that died before it stored the outcome; it is deleted and claimed again.
    """
    claim_id = new_id()
    values = {
        "organization_id": organization_id,
        "caller": caller,
        "request_id": request_id,
        "claim_id": claim_id,
        "claimed_at": utcnow(),
    }
    connection = session.connection()
    statement = _claim_inflight_statement(connection)
    if connection.dialect.name == "postgresql":
        # A claim is a transient lock, not a record: its commit need not wait for the WAL flush
        # (it is visible at once all the same; a crash loses only claims of dead processes).
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
    if connection.execute(statement, values).scalar() is not None:
        return claim_id
    stale = connection.execute(
        delete(LlmInflight).where(
            LlmInflight.organization_id == organization_id,
            LlmInflight.caller == caller,
            LlmInflight.request_id == request_id,
            LlmInflight.claimed_at < stale_before,
        )
    )
    if stale.rowcount and connection.execute(statement, values).scalar() is not None:
        return claim_id
    return None


_INFLIGHT_CLAIMS: dict[str, Any] = {}


def _claim_inflight_statement(connection: Connection) -> Any:
    statement = _INFLIGHT_CLAIMS.get(connection.dialect.name)
    if statement is None:
        statement = (
            _insert(connection)(LlmInflight)
            .on_conflict_do_nothing(index_elements=["organization_id", "caller", "request_id"])
            .returning(LlmInflight.claim_id)
        )
        _INFLIGHT_CLAIMS[connection.dialect.name] = statement
    return statement


def release(
    session: Session, organization_id: uuid.UUID, caller: str, request_id: str, claim_id: uuid.UUID
) -> None:
    """Give the claim up without an outcome (the request ended before anything was stored)."""
    session.connection().execute(
        _RELEASE, [{"o": organization_id, "c": caller, "r": request_id, "k": claim_id}]
    )


_CLAIMS: dict[str, Any] = {}


def _claim_statement(connection: Connection) -> Any:
    statement = _CLAIMS.get(connection.dialect.name)
    if statement is None:
        statement = (
            _insert(connection)(LlmRequest)
            .on_conflict_do_nothing(index_elements=["organization_id", "caller", "request_id"])
            .returning(LlmRequest.id)
        )
        _CLAIMS[connection.dialect.name] = statement
    return statement


def new_id() -> uuid.UUID:
    """A random (version 4) UUID for a row or a request.

    From ``random.getrandbits`` (seeded from the OS in every process, reseeded after fork), not
    ``uuid4``: ``os.urandom`` releases the GIL, and getting it back between the event loop and the
    accounting thread cost up to a switch interval each time.
    """
    return uuid.UUID(int=random.getrandbits(128), version=4)


def _usage_values(outcome: Outcome, row: UsageRow) -> dict[str, Any]:
    return {
        "id": new_id(),
        "organization_id": outcome.organization_id,
        "user_id": outcome.user_id,
        "agent_slug": outcome.agent_slug,
        "session_id": outcome.session_id,
        "llm_config_id": row.llm_config_id,
        "provider": row.provider,
        "model_id": row.model_id,
        "is_fallback": row.is_fallback,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "latency_ms": row.latency_ms,
        "estimated_cost_usd": row.estimated_cost_usd,
        "request_type": "agent_chat",
        "cache_hit": row.cache_hit,
        "status": row.status,
        "error_code": row.error_code,
        "created_at": row.created_at,
    }


def _vamn_values(outcome: Outcome, row: VamnRow) -> dict[str, Any]:
    return {
        "id": new_id(),
        "organization_id": outcome.organization_id,
        "agent_slug": outcome.agent_slug,
        "session_id": outcome.session_id,
        "head_type": row.head_type,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "latency_ms": row.latency_ms,
        "cache_hit": False,
        "status": row.status,
        "error_message": row.error_message,
    }


def write_health(connection: Connection, health: Mapping[uuid.UUID, str]) -> None:
    """Store the circuit state the cascade observed (``healthy``/``unhealthy``) on its configs."""
    for config_id in sorted(health, key=str):
        connection.execute(
            update(TenantLlmConfig)
            .where(TenantLlmConfig.id == config_id)
            .values(health_status=health[config_id], last_health_check=utcnow())
        )


def charge_fallback(
    session: Session, settings: Settings, organization_id: uuid.UUID, tokens: int, cost: Decimal
) -> None:
    """Add one fallback request to the organization's row for this month, atomically."""
    _charge_all(session.connection(), settings, [(organization_id, tokens, cost)])


def _charge_all(
    connection: Connection, settings: Settings, charges: Sequence[tuple[uuid.UUID, int, Decimal]]
) -> None:
    """Add fallback requests to their organizations' rows for this month, organization by organization.

    ``pay_as_you_go`` and ``unlimited_tier`` charges do not depend on each other: one upsert per
    organization adds their exact sum.
    Bundle charges depend on what the earlier requests left of the bundle: one upsert per request,
    in order, in this transaction.
    """
    organizations = sorted({org for org, _, _ in charges}, key=str)
    models: dict[uuid.UUID, str] = {
        org: model
        for org, model in connection.execute(
            select(Organization.id, Organization.billing_model).where(Organization.id.in_(organizations))
        )
    }
    for org in organizations:
        billing_model = models.get(org) or "pay_as_you_go"
        mine = [(tokens, cost) for o, tokens, cost in charges if o == org]
        if billing_model in ("token_bundle", "hybrid"):
            for tokens, cost in mine:
                _charge_bundle(connection, settings, org, billing_model, tokens, cost)
            continue
        total = Decimal(0)
        if billing_model != "unlimited_tier":
            total = sum((cost for _, cost in mine), Decimal(0))
        tokens = sum(t for t, _ in mine)
        _upsert_billing(connection, settings, org, billing_model, tokens, len(mine), total, total, False)


def _charge_bundle(
    connection: Connection,
    settings: Settings,
    organization_id: uuid.UUID,
    billing_model: str,
    tokens: int,
    cost: Decimal,
) -> None:
    table = FallbackBilling.__table__
    if tokens > 0:
        first_charge = _overage(cost, tokens, Decimal(settings.token_bundle_tokens))
        remaining = func.coalesce(table.c.bundle_tokens_remaining, 0)
        later_charge: Any = case(
            (remaining >= tokens, Decimal(0)),
            (remaining <= 0, cost),
            else_=cost * (tokens - remaining) / tokens,
        )
    else:
        first_charge = cost
        later_charge = first_charge
    _upsert_billing(
        connection, settings, organization_id, billing_model, tokens, 1, first_charge, later_charge, True
    )


def _upsert_billing(
    connection: Connection,
    settings: Settings,
    organization_id: uuid.UUID,
    billing_model: str,
    tokens: int,
    requests: int,
    first_charge: Decimal,
    later_charge: Any,
    bundle: bool,
) -> None:
    """INSERT the month's row or, when it exists, add to it in the same statement (atomic)."""
    start, end = billing_period(utcnow().date())
    table = FallbackBilling.__table__
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "organization_id": organization_id,
        "billing_period_start": start,
        "billing_period_end": end,
        "total_fallback_tokens": tokens,
        "total_fallback_requests": requests,
        "total_cost_usd": invoice_line(first_charge),
        "total_cost_exact_usd": first_charge,
        "billing_model": billing_model,
        "bundle_tokens_remaining": max(settings.token_bundle_tokens - tokens, 0) if bundle else None,
    }
    updates: dict[str, Any] = {
        "total_fallback_tokens": table.c.total_fallback_tokens + tokens,
        "total_fallback_requests": table.c.total_fallback_requests + requests,
        # Rounded once, from the exact sum: never a sum of rounded charges.
        "total_cost_exact_usd": table.c.total_cost_exact_usd + later_charge,
        "total_cost_usd": func.round(table.c.total_cost_exact_usd + later_charge, 4),
        "updated_at": func.now(),
    }
    if bundle:
        remaining_after = func.coalesce(table.c.bundle_tokens_remaining, 0) - tokens
        updates["bundle_tokens_remaining"] = case((remaining_after < 0, 0), else_=remaining_after)
    statement = (
        _insert(connection)(FallbackBilling)
        .values(**values)
        .on_conflict_do_update(
            index_elements=["organization_id", "billing_period_start", "billing_period_end"], set_=updates
        )
    )
    connection.execute(statement)


def _overage(cost: Decimal, tokens: int, remaining: Decimal) -> Decimal:
    if remaining >= tokens:
        return Decimal(0)
    if remaining <= 0:
        return cost
    return cost * (Decimal(tokens) - remaining) / Decimal(tokens)


def stored_response(
    session: Session, organization_id: uuid.UUID, request_id: str, caller: str = ""
) -> LlmRequest | None:
    return session.scalars(
        select(LlmRequest).where(
            LlmRequest.organization_id == organization_id,
            LlmRequest.caller == caller,
            LlmRequest.request_id == request_id,
        )
    ).first()


def usage_rows(session: Session, organization_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(LlmUsageLog)
        .where(LlmUsageLog.organization_id == organization_id)
        .order_by(LlmUsageLog.created_at.desc(), LlmUsageLog.id)
        .limit(limit)
    ).all()
    return [
        {
            "id": str(r.id),
            "agent_slug": r.agent_slug,
            "session_id": str(r.session_id) if r.session_id else None,
            "llm_config_id": str(r.llm_config_id) if r.llm_config_id else None,
            "provider": r.provider,
            "model_id": r.model_id,
            "is_fallback": r.is_fallback,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "total_tokens": r.input_tokens + r.output_tokens,
            "latency_ms": r.latency_ms,
            "estimated_cost_usd": str(r.estimated_cost_usd) if r.estimated_cost_usd is not None else None,
            "request_type": r.request_type,
            "cache_hit": bool(r.cache_hit),
            "status": r.status,
            "error_code": r.error_code,
            "created_at": iso(r.created_at),
        }
        for r in rows
    ]


def billing_rows(session: Session, organization_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(FallbackBilling)
        .where(FallbackBilling.organization_id == organization_id)
        .order_by(FallbackBilling.billing_period_start.desc())
    ).all()
    return [
        {
            "billing_period_start": r.billing_period_start.isoformat(),
            "billing_period_end": r.billing_period_end.isoformat(),
            "total_fallback_requests": r.total_fallback_requests,
            "total_fallback_tokens": r.total_fallback_tokens,
            "total_cost_usd": str(invoice_line(Decimal(str(r.total_cost_exact_usd)))),
            "total_cost_exact_usd": format(Decimal(str(r.total_cost_exact_usd)).normalize(), "f"),
            "billing_model": r.billing_model,
            "bundle_tokens_remaining": r.bundle_tokens_remaining,
            "invoice_status": r.invoice_status,
        }
        for r in rows
    ]
