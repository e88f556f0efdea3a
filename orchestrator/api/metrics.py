"""``GET /metrics``: Prometheus' text format, read from the database at scrape time.

What is exported (every label bounded: organizations, model types, units, providers, statuses,
route templates; never a user or request id):

- ``accute_privacy_epsilon_spent`` / ``accute_privacy_epsilon_cap`` per organization, model type
  and unit (the numbers of ``accute-fl budget show``: ``privacy.ledger.budget_rows``, one numpy
  pass over the stored RDP curves), ``accute_privacy_budgets`` per status;
- ``accute_privacy_budget_alerts_total`` per model type and threshold (``privacy_budget_alerts``);
- ``accute_fl_contributions`` per model type and status; ``accute_fl_round_duration_seconds``;
- ``accute_cascade_requests_total`` per provider and outcome (``llm_usage_log``);
  ``accute_fallback_tokens_billed_total`` per organization (``fallback_billing``);
- in this process: ``accute_http_request_duration_seconds`` per route template, method and
  status class, and ``accute_privacy_charge_duration_seconds`` (``privacy.timing``).

Protected by ``ACCUTE_METRICS_TOKEN`` (a bearer token compared in constant time). Unset, the
route answers 404 and the request middleware is not installed (no cost on other routes).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _go_float
from sqlalchemy import Engine

from privacy import ledger, timing
from privacy.ledger import BudgetStatus, LedgerPolicy
from schema.db import transaction
from schema.errors import AuthenticationError, NotFoundError

if TYPE_CHECKING:
    from orchestrator.service import Services

#: Bounds (seconds) of a federated round's duration.
ROUND_BUCKETS_S: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
#: Bounds (seconds) of an HTTP request's duration in the service.
REQUEST_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@dataclass
class Snapshot:
    """What one scrape reads from the database, in one transaction."""

    budgets: list[BudgetStatus]
    alerts: list[tuple[str, str, int]]
    contributions: list[tuple[str, str, int]]
    durations: list[tuple[str, float]]
    requests: list[tuple[str, str, int]]
    tokens: list[tuple[str, int]]
    hub: dict[str, float]


def read_snapshot(engine: Engine, policy: LedgerPolicy) -> Snapshot:
    from fl_server.run_views import contribution_counts, round_durations
    from orchestrator.hub.metrics import hub_metrics
    from orchestrator.usage_views import fallback_tokens, request_counts
    from privacy.alerts import alert_counts

    with transaction(engine) as session:
        return Snapshot(
            budgets=ledger.budget_rows(session, policy=policy),
            alerts=alert_counts(session),
            contributions=contribution_counts(session),
            durations=round_durations(session),
            requests=request_counts(session),
            tokens=fallback_tokens(session),
            hub=hub_metrics(session),
        )


_HUB_HELP = "Fin(Ai)d hub outbox and relay, as accute-fl hub status reports it."
_BUDGET_LABELS = ["organization_id", "model_type", "unit"]
_SPENT = ("accute_privacy_epsilon_spent", "Epsilon spent (at the budget's delta), as budget show.")
_CAP = ("accute_privacy_epsilon_cap", "Epsilon cap of the budget.")


def families(snapshot: Snapshot, *, per_budget: bool = True) -> Iterator[Metric]:
    """The database's metric families (``per_budget``: also the two gauges per budget, which
    ``budget_text`` writes faster for the route)."""
    if per_budget:
        spent = GaugeMetricFamily(*_SPENT, labels=_BUDGET_LABELS)
        cap = GaugeMetricFamily(*_CAP, labels=_BUDGET_LABELS)
        for row in snapshot.budgets:
            key = [row.organization_id, row.model_type, row.unit]
            spent.add_metric(key, row.epsilon_spent)
            cap.add_metric(key, row.epsilon_cap)
        yield spent
        yield cap
    by_status = {"ok": 0, "near_cap": 0, "exhausted": 0}
    for row in snapshot.budgets:
        by_status[row.status] += 1
    status_family = GaugeMetricFamily(
        "accute_privacy_budgets", "Budgets by status (near_cap at 80 % of the cap).", labels=["status"]
    )
    for status, count in by_status.items():
        status_family.add_metric([status], count)
    yield status_family

    alert_family = CounterMetricFamily(
        "accute_privacy_budget_alerts",
        "Budget threshold crossings recorded (near_cap, exhausted).",
        labels=["model_type", "threshold"],
    )
    for model_type, threshold, count in snapshot.alerts:
        alert_family.add_metric([model_type, threshold], count)
    yield alert_family

    contribution_family = GaugeMetricFamily(
        "accute_fl_contributions", "Federated contributions by status.", labels=["model_type", "status"]
    )
    for model_type, status, count in snapshot.contributions:
        contribution_family.add_metric([model_type, status], count)
    yield contribution_family

    yield _histogram(
        "accute_fl_round_duration_seconds",
        "Seconds from a round's start (the previous commit) to its commit.",
        "model_type",
        snapshot.durations,
        ROUND_BUCKETS_S,
    )

    request_family = CounterMetricFamily(
        "accute_cascade_requests",
        "Cascade attempts by provider and outcome (llm_usage_log).",
        labels=["provider", "outcome"],
    )
    for provider, outcome, count in snapshot.requests:
        request_family.add_metric([provider, outcome], count)
    yield request_family

    token_family = CounterMetricFamily(
        "accute_fallback_tokens_billed",
        "Fallback tokens billed (fallback_billing).",
        labels=["organization_id"],
    )
    for organization_id, count in snapshot.tokens:
        token_family.add_metric([organization_id], count)
    yield token_family

    for name, value in snapshot.hub.items():  # the outbox and this process's relays (hub status)
        if name.endswith("_total"):
            yield CounterMetricFamily(name.removesuffix("_total"), _HUB_HELP, value=value)
        else:
            yield GaugeMetricFamily(name, _HUB_HELP, value=value)

    buckets, total = timing.CHARGES.snapshot()
    charges = HistogramMetricFamily(
        "accute_privacy_charge_duration_seconds", "Seconds a privacy ledger charge took (this process)."
    )
    charges.add_metric([], [(bound, float(count)) for bound, count in buckets], total)
    yield charges


def floatToGoString(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, Go's exponent form)."""
    return str(_go_float(value))  # type: ignore[no-untyped-call]


def _label_value(value: str) -> str:
    """A label value escaped as the text format wants (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def budget_text(budgets: list[BudgetStatus]) -> str:
    """The two per-budget gauges in the text format, written directly: the same lines
    ``generate_latest`` writes for them (labels sorted by name), at a fraction of the cost for
    thousands of budgets (its per-sample label escaping dominated a scrape)."""
    spent_lines = [f"# HELP {_SPENT[0]} {_SPENT[1]}", f"# TYPE {_SPENT[0]} gauge"]
    cap_lines = [f"# HELP {_CAP[0]} {_CAP[1]}", f"# TYPE {_CAP[0]} gauge"]
    escaped: dict[str, str] = {}
    for row in budgets:
        model_type = escaped.get(row.model_type)
        if model_type is None:
            model_type = escaped[row.model_type] = _label_value(row.model_type)
        labels = f'{{model_type="{model_type}",organization_id="{row.organization_id}",unit="{row.unit}"}}'
        spent_lines.append(f"{_SPENT[0]}{labels} {floatToGoString(row.epsilon_spent)}")
        cap_lines.append(f"{_CAP[0]}{labels} {floatToGoString(row.epsilon_cap)}")
    return "\n".join(spent_lines) + "\n" + "\n".join(cap_lines) + "\n"


class DatabaseCollector(Collector):
    """Reads the current values from the database on every scrape (one transaction)."""

    def __init__(self, engine: Engine, policy: LedgerPolicy) -> None:
        self.engine = engine
        self.policy = policy

    def collect(self) -> Iterator[Metric]:
        yield from families(read_snapshot(self.engine, self.policy))


class _Scrape:
    """One scrape's families: this process's histograms and the database's (without the
    per-budget gauges, written by ``budget_text``)."""

    def __init__(self, registry: CollectorRegistry, snapshot: Snapshot) -> None:
        self.registry = registry
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from families(self.snapshot, per_budget=False)


def _histogram(
    name: str, documentation: str, label: str, values: list[tuple[str, float]], bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    grouped: dict[str, list[float]] = {}
    for key, value in values:
        grouped.setdefault(key, []).append(value)
    for key in sorted(grouped):
        observed = grouped[key]
        buckets = [(repr(float(b)), float(sum(1 for v in observed if v <= b))) for b in bounds]
        buckets.append(("+Inf", float(len(observed))))
        family.add_metric([key], buckets, sum(observed))
    return family


class RequestMetrics:
    """Pure ASGI middleware: each request's duration by route template, method and status class.

    The route template is FastAPI's (``/v1/orgs/{org}/usage``), read from the scope after routing;
    an unmatched path counts as ``unmatched`` and an unknown method as ``other``.
    """

    def __init__(self, app: Any, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracked(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.histogram.labels(
                route, method if method in _METHODS else "other", f"{status // 100}xx"
            ).observe(time.perf_counter() - started)


def install(app: FastAPI, services: Services) -> None:
    """Add ``GET /metrics`` and, when metrics are on, the request-duration middleware."""
    token = services.settings.metrics_token
    registry = CollectorRegistry(auto_describe=False)
    policy = LedgerPolicy.from_settings(services.settings)
    if token is not None:
        histogram = Histogram(
            "accute_http_request_duration_seconds",
            "Seconds the service took to answer, by route template, method and status class.",
            ["route", "method", "status_class"],
            buckets=REQUEST_BUCKETS_S,
            registry=registry,
        )
        app.add_middleware(RequestMetrics, histogram=histogram)
    expected = b"" if token is None else token.get_secret_value().encode()

    @app.get(
        "/metrics",
        tags=["metrics"],
        summary="Prometheus metrics (bearer ACCUTE_METRICS_TOKEN; 404 when unset)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
    )
    def metrics(request: Request) -> Response:
        if token is None:
            raise NotFoundError("metrics are off; set ACCUTE_METRICS_TOKEN to turn them on")
        scheme, given = get_authorization_scheme_param(request.headers.get("authorization"))
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
            raise AuthenticationError("unauthenticated")
        snapshot = read_snapshot(services.engine, policy)
        body = generate_latest(_Scrape(registry, snapshot)) + budget_text(snapshot.budgets).encode()
        return Response(body, media_type=CONTENT_TYPE_LATEST)
