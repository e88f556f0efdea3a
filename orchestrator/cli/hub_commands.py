"""`accute-fl hub relay|status|dead|replay|prune|workflows`: the Fin(Ai)d hub outbox for operators.

``relay`` is the only command that talks to the broker or the hub (aio-pika is imported there);
the others read and change the outbox rows.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import typer

from orchestrator.cli.context import load_settings, ready_engine
from orchestrator.cli.output import emit, emit_json, emit_table
from schema.db import transaction

app = typer.Typer(
    help="The Fin(Ai)d hub: publish the event outbox (relay), its status, dead letters and replay.",
    no_args_is_help=True,
)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")
DEAD_COLUMNS = (
    "sequence",
    "event_id",
    "event_type",
    "organization_id",
    "attempts",
    "occurred_at",
    "last_error",
)


def _line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@app.command("relay")
def relay(
    once: bool = typer.Option(False, "--once", help="Publish what is due now, then exit."),
) -> None:
    """Publish pending outbox events to RabbitMQ and/or the HTTP hub until stopped (Ctrl-C, SIGTERM).

    Progress goes to stderr, one line per batch. With neither ACCUTE_HUB_AMQP_URL nor ACCUTE_HUB_URL
    set there is nothing to publish to: the command says so and exits 2.
    """
    from orchestrator.hub import runtime
    from schema.errors import ConfigurationError, UpstreamUnavailableError

    settings = load_settings()
    engine = ready_engine()
    wiring = runtime.build(settings, engine)
    if wiring is None:
        raise ConfigurationError(
            "no hub is configured; set ACCUTE_HUB_AMQP_URL and/or ACCUTE_HUB_URL (events stay in the outbox)"
        )

    def progress(report: Any) -> None:
        latency = sorted(report.latencies_ms)
        p50 = f"{latency[len(latency) // 2]:.1f} ms" if latency else "-"
        _line(
            f"hub relay: claimed {report.claimed}, published {report.published}, failed {report.failed}, "
            f"dead {report.dead}, released {report.released}, latency p50 {p50}"
            + (f"; {report.unavailable}" if report.unavailable else "")
        )

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            _line(
                f"hub relay {wiring.relay.relay_id}: publishing to {', '.join(s.name for s in wiring.relay.sinks)}"
            )
            total = await wiring.relay.run(
                stop, once=once, idle_s=settings.hub_poll_s, progress=progress, between=wiring.between
            )
            if once and not total.unavailable:
                await wiring.dispatch_now()
            return total
        finally:
            if wiring.client is not None:
                await wiring.client.close()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    total = asyncio.run(main())
    _line(f"hub relay: stopped; published {total.published}, failed {total.failed}, dead {total.dead}")
    if once and total.unavailable:
        raise UpstreamUnavailableError(f"{total.unavailable}; the events stay pending")


@app.command("status")
def status(as_json: bool = JSON_OPTION) -> None:
    """Pending events, the oldest one's age, published per minute and commit→ack latency (last 10
    minutes), events failing (waiting for a retry) and dead letters."""
    from orchestrator.hub import store

    with transaction(ready_engine()) as session:
        numbers = store.status(session)
    if as_json:
        emit_json(numbers)
        return
    rows = [{"measure": k, "value": "-" if v is None else v} for k, v in numbers.items()]
    emit_table("Hub outbox", rows, ("measure", "value"))


@app.command("dead")
def dead(
    org: str | None = typer.Option(None, "--org", help="Only this organization's (id or name)."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="At most this many."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Dead letters: events that failed the retry policy's attempts, oldest first."""
    import uuid

    from orchestrator.cli.context import organization_id
    from orchestrator.hub import store

    tenant = organization_id(org)
    with transaction(ready_engine()) as session:
        rows = store.list_dead(
            session, organization_id=None if tenant is None else uuid.UUID(tenant), limit=limit
        )
    emit(rows, as_json, "Hub dead letters", DEAD_COLUMNS)


@app.command("replay")
def replay(
    ref: str = typer.Argument(..., help="The dead letter's event id or sequence (see `accute-fl hub dead`)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Put a dead letter back in line: pending again, its attempts reset (audited)."""
    from orchestrator.hub import store
    from schema import audit

    with transaction(ready_engine()) as session:
        row = store.replay(session, ref)
        import uuid

        audit.append(
            session,
            organization_id=None if row["organization_id"] is None else uuid.UUID(row["organization_id"]),
            action="hub.event.replayed",
            resource_type="hub_outbox",
            resource_id=uuid.UUID(row["event_id"]),
            data={"sequence": row["sequence"], "event_type": row["event_type"]},
        )
    if as_json:
        emit_json(row)
    else:
        _line(f"event {row['event_id']} ({row['event_type']}) is pending again")


@app.command("prune")
def prune(
    older_than_days: float = typer.Option(
        7.0,
        "--older-than-days",
        min=0,
        help="Delete published events acknowledged more than this many days ago.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete published (acknowledged) events older than the given age; pending and dead letters stay.

    Run it from cron (e.g. daily): the outbox otherwise keeps every published event, and `hub status`
    slows as it grows. Progress goes to stderr per batch.
    """
    from datetime import timedelta

    from orchestrator.hub import store

    deleted = store.prune(
        ready_engine(),
        older_than=timedelta(days=older_than_days),
        progress=lambda n: _line(f"pruned {n} published events so far"),
    )
    if as_json:
        emit_json({"deleted": deleted, "older_than_days": older_than_days})
    else:
        _line(f"pruned {deleted} published events acknowledged more than {older_than_days:g} days ago")


@app.command("workflows")
def workflows(as_json: bool = JSON_OPTION) -> None:
    """The configured cross-product workflows and their recent executions."""
    from orchestrator.hub.workflows import executions, load

    settings = load_settings()
    book = load(settings.hub_workflows_file)
    configured = [
        {
            "name": w.name,
            "trigger": w.trigger.event_type
            + ("[" + ",".join(f"{k}={v}" for k, v in w.trigger.where) + "]" if w.trigger.where else ""),
            "steps": len(w.steps),
        }
        for w in book.workflows
    ]
    with transaction(ready_engine()) as session:
        recent = executions(session)
    if as_json:
        emit_json({"workflows": configured, "executions": recent})
        return
    emit_table("Workflows", configured, ("name", "trigger", "steps"))
    emit_table(
        "Executions", recent, ("workflow_id", "event_id", "status", "attempts", "execution_id", "last_error")
    )
