"""The relay's pure rules: which rows a tenant may publish, how outcomes settle, backoff, triggers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.hub.backoff import RETRY_AFTER_CAP_S, RetryPolicy
from orchestrator.hub.client import retry_after_seconds
from orchestrator.hub.relay import combine, split
from orchestrator.hub.sink import Acked, NotTried, Refused, redact_url
from orchestrator.hub.store import Claimed, keep_ordered_prefixes, percentile
from orchestrator.hub.workflows import Trigger, parse
from schema.errors import ConfigurationError

A, B = uuid.uuid4(), uuid.uuid4()
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def claimed(sequence: int, tenant: uuid.UUID | None) -> Claimed:
    return Claimed(sequence, uuid.uuid4(), "accute.consent.granted", tenant, "c", 0, NOW, {})


def test_a_tenant_keeps_only_an_unbroken_prefix_of_its_pending_rows() -> None:
    # A's row 2 is pending but not a candidate (leased, waiting for a retry, locked elsewhere).
    pending = [(1, A), (2, A), (3, B), (4, A), (5, B), (6, None)]
    candidates = [(1, A), (3, B), (4, A), (5, B), (6, None)]

    assert keep_ordered_prefixes(candidates, pending) == [1, 3, 5, 6]


def test_a_tenant_whose_head_is_not_a_candidate_gives_up_every_row() -> None:
    assert keep_ordered_prefixes([(2, A), (3, B)], [(1, A), (2, A), (3, B)]) == [3]


def test_the_first_failure_of_a_tenant_releases_its_later_rows() -> None:
    batch = [claimed(1, A), claimed(2, B), claimed(3, A), claimed(4, A), claimed(5, B)]
    outcomes = [Acked(NOW), Acked(NOW), Refused("nack"), Acked(NOW), NotTried()]

    published, failed, released = split(batch, outcomes)

    assert [e.sequence for e, _ in published] == [1, 2]
    assert [(f.sequence, f.error) for f in failed] == [(3, "nack")]
    assert released == [4, 5]


def test_an_event_counts_as_acked_only_when_every_sink_acked_it() -> None:
    later = NOW + timedelta(seconds=1)
    per_sink = [[Acked(NOW), Acked(NOW), Refused("x")], [Acked(later), NotTried(), Acked(NOW)]]

    combined = combine(per_sink, 3)

    assert combined[0] == Acked(later) and isinstance(combined[1], NotTried) and combined[2] == Refused("x")


def test_backoff_grows_with_jitter_up_to_the_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_attempts=3, initial_s=1.0, max_s=10.0, jitter_s=0.5)

    delays = [policy.delay(n) for n in (1, 2, 3, 4, 10)]

    assert 1.0 <= delays[0] <= 1.5 and 2.0 <= delays[1] <= 2.5 and 4.0 <= delays[2] <= 4.5
    assert delays[4] <= 10.0
    assert policy.delay(1, retry_after_s=30) == 30
    assert policy.delay(1, retry_after_s=10**9) == RETRY_AFTER_CAP_S
    assert not policy.exhausted(2) and policy.exhausted(3)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), (None, None), ("soon", None), ("Mon, 30 Nov 2026 00:00:10 GMT", 10.0)],
)
def test_retry_after_as_seconds_or_http_date(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=NOW) == seconds


def test_triggers_parse_as_the_spec_writes_them() -> None:
    trigger = Trigger.parse("accute.task.assigned[type=tax_filing]")

    assert trigger == Trigger("accute.task.assigned", (("type", "tax_filing"),))
    assert trigger.matches("accute.task.assigned", {"type": "tax_filing", "x": 1})
    assert not trigger.matches("accute.task.assigned", {"type": "audit"})
    assert not trigger.matches("accute.task.completed", {"type": "tax_filing"})
    with pytest.raises(ValueError):
        Trigger.parse("accute.task.assigned[type]")


def test_the_shipped_book_holds_the_spec_examples() -> None:
    from orchestrator.hub.workflows import load

    book = load()

    assert {w.name: w.trigger.event_type for w in book.workflows} == {
        "invoice_document_extraction": "accute.invoice.generated",
        "client_compliance_check": "accute.client.created",
        "comprehensive_tax_filing": "accute.task.assigned",
    }
    assert (
        book.matching("accute.task.assigned", {"type": "tax_filing"})[0].steps[-1]
        == "accute.relay_agent.send_to_client"
    )


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"workflows": [{"name": "x y", "trigger": "a.b"}]},
        {"workflows": [{"name": "a", "trigger": "A!"}]},
        {"workflows": [{"name": "a", "trigger": "a.b"}, {"name": "a", "trigger": "a.c"}]},
    ],
)
def test_a_bad_book_is_a_configuration_error(document: object) -> None:
    with pytest.raises(ConfigurationError):
        parse(document)


def test_passwords_never_show_in_urls_and_percentiles_are_nearest_rank() -> None:
    assert redact_url("amqp://guest:pw@h:5672/v") == "amqp://guest:***@h:5672/v"
    assert redact_url("http://hub.example/") == "http://hub.example/"
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0 and percentile([1.0, 2.0], 0.99) == 2.0
    assert percentile([], 0.5) is None
