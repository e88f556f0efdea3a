"""Group commit of the accounting (``orchestrator.writer``): duplicates, failures, billing, shutdown."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, select

from orchestrator import accounting
from orchestrator.accounting import DuplicateRequest, Outcome, UsageRow
from orchestrator.writer import AccountingWriter
from schema import directory
from schema.config import Settings
from schema.db import transaction
from schema.models import FallbackBilling, LlmRequest, LlmUsageLog

COST = Decimal("0.000700")  # one fallback call of 10 + 20 tokens at the test prices


def _org(engine: Engine, billing_model: str = "pay_as_you_go") -> uuid.UUID:
    with transaction(engine) as session:
        return directory.create_organization(session, f"firm-{uuid.uuid4().hex[:8]}", billing_model).id


def _outcome(org: uuid.UUID, request_id: str, *, billed: bool = False, attempts: int = 1) -> Outcome:
    response = {
        "content": f"answer to {request_id}",
        "provider": "openai",
        "model_id": "m",
        "is_fallback": billed,
        "input_tokens": 10,
        "output_tokens": 20,
        "latency_ms": 1,
        "estimated_cost": float(COST) if billed else 0.0,
        "cache_hit": False,
    }
    usage = [UsageRow("openai", "m", "error", error_code="http_500") for _ in range(attempts - 1)]
    usage.append(UsageRow("openai", "m", "success", 10, 20, 1, is_fallback=billed))
    outcome = Outcome(org, request_id, "luca", None, None, "success", response, usage, [])
    if billed:
        outcome.billed_tokens, outcome.billed_cost = 30, COST
    return outcome


def _counts(engine: Engine, org: uuid.UUID) -> tuple[int, int]:
    with transaction(engine) as session:
        requests = session.scalar(
            select(func.count()).select_from(LlmRequest).where(LlmRequest.organization_id == org)
        )
        usage = session.scalar(
            select(func.count()).select_from(LlmUsageLog).where(LlmUsageLog.organization_id == org)
        )
    return int(requests or 0), int(usage or 0)


def _bill(engine: Engine, org: uuid.UUID) -> FallbackBilling:
    with transaction(engine) as session:
        return session.scalars(select(FallbackBilling).where(FallbackBilling.organization_id == org)).one()


def test_a_batch_writes_each_request_id_once_within_and_across_batches(engine: Engine) -> None:
    # Prepare: r1 twice in the first batch; r1 again (and a new r3) in the second.
    org = _org(engine)
    settings = Settings()
    first = [_outcome(org, "r1", attempts=2), _outcome(org, "r2"), _outcome(org, "r1")]
    second = [_outcome(org, "r1"), _outcome(org, "r3")]

    # Execute
    with engine.begin() as connection:
        written_first = accounting.record_batch(connection, settings, first)
    with engine.begin() as connection:
        written_second = accounting.record_batch(connection, settings, second)

    # Assert: only the first r1 counts (its two attempts), r2 and r3 once each.
    assert written_first == [True, True, False] and written_second == [False, True]
    assert _counts(engine, org) == (3, 4)
    with transaction(engine) as session:
        stored = accounting.stored_response(session, org, "r1")
    assert stored is not None and stored.response_json == first[0].response


def test_the_same_request_id_in_two_organizations_is_two_requests(engine: Engine) -> None:
    # Prepare
    a, b = _org(engine), _org(engine)

    # Execute
    with engine.begin() as connection:
        written = accounting.record_batch(connection, Settings(), [_outcome(a, "same"), _outcome(b, "same")])

    # Assert
    assert written == [True, True] and _counts(engine, a) == (1, 1) and _counts(engine, b) == (1, 1)


def test_billing_in_one_batch_equals_billing_one_by_one(engine: Engine) -> None:
    # Prepare: a 50-token bundle (each call uses 30 tokens), pay-as-you-go, unlimited.
    settings = Settings(token_bundle_tokens=50)
    bundle, paying, unlimited = (
        _org(engine, "token_bundle"),
        _org(engine, "pay_as_you_go"),
        _org(engine, "unlimited_tier"),
    )
    outcomes = [
        _outcome(org, f"{org}-{i}", billed=True) for i in range(3) for org in (bundle, paying, unlimited)
    ]

    # Execute: all nine in one transaction.
    with engine.begin() as connection:
        assert accounting.record_batch(connection, settings, outcomes) == [True] * 9

    # Assert: the bundle goes 50 → 20 → 0 → 0 and charges 0 + 0.0002 + 0.0007 (as one by one).
    rows = {org: _bill(engine, org) for org in (bundle, paying, unlimited)}
    assert (rows[bundle].bundle_tokens_remaining, rows[bundle].total_cost_usd) == (0, Decimal("0.0009"))
    assert rows[paying].total_cost_usd == Decimal("0.0021")
    assert rows[unlimited].total_cost_usd == Decimal("0")
    assert all((r.total_fallback_requests, r.total_fallback_tokens) == (3, 90) for r in rows.values())


async def _write_all(writer: AccountingWriter, outcomes: list[Outcome]) -> list[BaseException | None]:
    results = await asyncio.gather(*(writer.write(o) for o in outcomes), return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]


def test_concurrent_requests_share_transactions_and_duplicates_are_told(engine: Engine) -> None:
    # Prepare: 60 concurrent requests, 10 of them repeating an earlier id.
    org = _org(engine)
    writer = AccountingWriter(engine, Settings())
    outcomes = [_outcome(org, f"q{i}") for i in range(50)] + [_outcome(org, f"q{i}") for i in range(10)]

    # Execute
    try:
        results = asyncio.run(_write_all(writer, outcomes))
    finally:
        writer.close()

    # Assert: every request answered once its rows committed; far fewer transactions than requests.
    assert results[:50] == [None] * 50
    assert all(isinstance(r, DuplicateRequest) for r in results[50:])
    assert _counts(engine, org) == (50, 50)
    assert writer.batches < 30


def test_one_failing_request_loses_nothing_of_the_others(engine: Engine) -> None:
    # Prepare: the middle outcome names an organization that does not exist (a foreign key error).
    org = _org(engine)
    ghost = uuid.uuid4()
    writer = AccountingWriter(engine, Settings())
    outcomes = [_outcome(org, f"ok{i}", billed=True) for i in range(10)]
    outcomes.insert(5, _outcome(ghost, "doomed", billed=True))

    # Execute
    try:
        results = asyncio.run(_write_all(writer, outcomes))
    finally:
        writer.close()

    # Assert: the ten others are written and billed exactly; the failing one gets its own error and
    # left nothing behind.
    failed = [r for r in results if r is not None]
    assert len(failed) == 1 and results[5] is failed[0] and not isinstance(failed[0], DuplicateRequest)
    assert _counts(engine, org) == (10, 10)
    assert _counts(engine, ghost) == (0, 0)
    bill = _bill(engine, org)
    assert (bill.total_fallback_requests, bill.total_cost_usd) == (10, Decimal("0.0070"))


def test_a_request_cancelled_while_waiting_is_still_written_and_close_flushes(engine: Engine) -> None:
    # Prepare
    org = _org(engine)
    writer = AccountingWriter(engine, Settings())

    async def cancel_one() -> None:
        kept = asyncio.ensure_future(writer.write(_outcome(org, "kept")))
        gone = asyncio.ensure_future(writer.write(_outcome(org, "gone")))
        await asyncio.sleep(0)  # both are queued
        gone.cancel()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone

    # Execute
    asyncio.run(cancel_one())
    writer.close()

    # Assert
    assert _counts(engine, org) == (2, 2)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(writer.write(_outcome(org, "late")))
