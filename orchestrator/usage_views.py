"""Aggregates of the cascade's usage and billing for ``/metrics``: what was asked of whom, and
what the fallback billed. Bounded by providers, statuses and organizations, never by user."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schema.models import FallbackBilling, LlmUsageLog


def request_counts(session: Session) -> list[tuple[str, str, int]]:
    """(provider, outcome, attempts) over ``llm_usage_log`` (every attempt, cache hits included)."""
    u = LlmUsageLog
    query = (
        select(u.provider, u.status, func.count())
        .group_by(u.provider, u.status)
        .order_by(u.provider, u.status)
    )
    return [(provider, status, int(n)) for provider, status, n in session.execute(query)]


def fallback_tokens(session: Session) -> list[tuple[str, int]]:
    """(organization id, fallback tokens billed over every period), sorted by organization."""
    b = FallbackBilling
    query = (
        select(b.organization_id, func.sum(b.total_fallback_tokens))
        .group_by(b.organization_id)
        .order_by(b.organization_id)
    )
    return [(str(org), int(tokens or 0)) for org, tokens in session.execute(query)]
