"""report.json of a run, built from the database alone (so a resumed run reports every round).

Shape (shared by ``run-local`` and ``simulate``)::

    {"config": {..., "delta": D}, "unit": U,
     "rounds": [{"round", "participants": [names], "skipped": {name: reason}, "statuses": {status: n},
                 "metric", "epsilon": {name: eps}}],
     "tenants": {name: {"organization_id", "unit", "epsilon_cap", "delta", "epsilon_spent",
                        "epsilon_by_unit": {unit: eps},
                        "dp_events": [{"mechanism", "unit", "noise_multiplier", "sample_rate", "steps"}]}},
     "final": {"metric", "model_name", "model_version", "weights_checksum", "weights_path"}}

``unit`` names what the run's epsilon protects (the run's local DP-SGD unit, "tenant" for a
central-DP-only run). Epsilons of different units are never added or mixed: ``epsilon_spent``
and the rounds' ``epsilon`` are the run unit's ledger, ``epsilon_by_unit`` lists every unit's.
``epsilon_spent`` is the tenant's lifetime ledger (every run of the model type); ``epsilon_run``
is this run's own events alone, composed with the same accountant at the budget's delta, and
``dp_events`` are this run's events only, in ledger order, each naming its unit and round, so an
independent accountant replaying them must find ``epsilon_run``. The rounds' ``epsilon_run``
follow it round by round (``epsilon`` stays the lifetime value after that round).

Which events are this run's: a local (DP-SGD or non-private) event is linked to a contribution,
and that contribution to this run by its round outcome (exact). A central event has no
contribution; it is this run's when its round is one of the run's, its parameters are the run's
central parameters, and it was charged while the run was active (from the run's creation to its
last update, open-ended while running). Two concurrent runs of one task with identical central
parameters over the same tenant could not be told apart that way; nothing else links them
without a schema change. A non-private release makes epsilon +inf, written "inf" (JSON has no
infinity).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from fl_server.config import DpMode, RunConfig
from privacy import accounting, ledger
from privacy.events import CentralDpEvent, event_from_row
from privacy.ledger import finite_or_inf
from schema.db import transaction
from schema.errors import NotFoundError
from schema.models import (
    FlNodeBinding,
    FlPublishedModel,
    FlRoundOutcome,
    FlRoundSummary,
    FlRun,
    VamnModelRegistry,
)
from schema.timeutil import iso


def build_report(
    engine: Engine, run_name: str, weights_dir: Path, policy: ledger.LedgerPolicy
) -> dict[str, Any]:
    with transaction(engine) as session:
        run = session.scalar(select(FlRun).where(FlRun.name == run_name))
        if run is None:
            raise NotFoundError(f"run '{run_name}' does not exist")
        config = RunConfig.parse(dict(run.config))
        unit = "tenant" if config.dp == DpMode.CENTRAL else config.privacy_unit
        tenants = {
            b.tenant: b.organization_id
            for b in session.scalars(select(FlNodeBinding).where(FlNodeBinding.run_id == run.id))
        }
        outcomes = list(
            session.scalars(
                select(FlRoundOutcome)
                .where(FlRoundOutcome.run_id == run.id)
                .order_by(FlRoundOutcome.aggregation_round, FlRoundOutcome.tenant)
            )
        )
        summaries = {
            s.aggregation_round: s
            for s in session.scalars(select(FlRoundSummary).where(FlRoundSummary.run_id == run.id))
        }
        histories = {
            name: ledger.history(session, org, config.task, policy=policy)
            for name, org in sorted(tenants.items())
        }
        contributions = {str(o.contribution_id) for o in outcomes if o.contribution_id is not None}
        window = (iso(run.created_at) or "", None if run.status == "running" else iso(run.updated_at))
        own = {
            name: [e for e in entries if _is_this_runs(e, contributions, config, window)]
            for name, entries in histories.items()
        }
        statuses = {
            name: ledger.budget_rows(session, org, policy=policy) for name, org in sorted(tenants.items())
        }
        published = session.execute(
            select(VamnModelRegistry, FlPublishedModel)
            .join(FlPublishedModel, FlPublishedModel.registry_id == VamnModelRegistry.id)
            .where(FlPublishedModel.run_id == run.id)
        ).first()
        #: The budget's delta of each tenant's ledger per unit (the platform default without a budget row).
        deltas: dict[str, dict[str, float]] = {
            name: defaultdict(
                lambda: policy.default_delta,
                {r.unit: r.delta for r in statuses[name] if r.model_type == config.task},
            )
            for name in tenants
        }

        by_round: dict[int, list[FlRoundOutcome]] = defaultdict(list)
        for outcome in outcomes:
            by_round[outcome.aggregation_round].append(outcome)
        rounds = []
        for number in range(1, run.last_completed_round + 1):
            rows = by_round.get(number, [])
            epsilon = {
                name: finite_or_inf(
                    _epsilon_at([e for e in entries if e.unit == unit], number, {e.id for e in own[name]})
                )
                for name, entries in histories.items()
            }
            summary = summaries.get(number)
            epsilon_run = {
                name: finite_or_inf(
                    _run_epsilon(
                        [e for e in entries if e.unit == unit and (e.aggregation_round or 0) <= number],
                        deltas[name][unit],
                        policy,
                    )
                )
                for name, entries in own.items()
            }
            rounds.append(
                {
                    "round": number,
                    "participants": sorted(r.tenant for r in rows if r.sampled),
                    "skipped": {r.tenant: r.status for r in rows if not r.sampled},
                    "skip_reasons": {r.tenant: r.reason for r in rows if not r.sampled},
                    "statuses": dict(Counter(r.status for r in rows)),
                    "metric": summary.metric_value if summary else None,
                    "epsilon": epsilon,
                    "epsilon_run": epsilon_run,
                }
            )
        tenant_report = {}
        skipped_rounds: dict[str, list[int]] = defaultdict(list)
        for outcome in outcomes:
            if not outcome.sampled:
                skipped_rounds[outcome.tenant].append(outcome.aggregation_round)
        for name, org in sorted(tenants.items()):
            rows_for_task = {row.unit: row for row in statuses[name] if row.model_type == config.task}
            status = rows_for_task.get(unit)
            tenant_report[name] = {
                "organization_id": str(org),
                "unit": unit,
                "epsilon_cap": status.epsilon_cap if status else policy.default_epsilon_cap,
                "delta": status.delta if status else policy.default_delta,
                "epsilon_spent": finite_or_inf(status.epsilon_spent if status else 0.0),
                "epsilon_run": finite_or_inf(
                    _run_epsilon([e for e in own[name] if e.unit == unit], deltas[name][unit], policy)
                ),
                "epsilon_run_by_unit": {
                    u: finite_or_inf(
                        _run_epsilon([e for e in own[name] if e.unit == u], deltas[name][u], policy)
                    )
                    for u in sorted({e.unit for e in own[name]})
                },
                "rounds_skipped": sorted(skipped_rounds.get(name, [])),
                "lifetime_dp_events": len(histories[name]),
                "epsilon_by_unit": {
                    u: finite_or_inf(row.epsilon_spent) for u, row in sorted(rows_for_task.items())
                },
                "dp_events": [
                    {
                        "mechanism": e.mechanism,
                        "unit": e.unit,
                        "noise_multiplier": e.noise_multiplier,
                        "sample_rate": e.sample_rate,
                        "steps": e.steps,
                        "clip_norm": e.clip_norm,
                        "aggregation_round": e.aggregation_round,
                    }
                    for e in own[name]
                ],
            }
        final: dict[str, Any] = {
            "metric": rounds[-1]["metric"] if rounds else None,
            "weights_checksum": run.weights_checksum,
            "weights_path": str(Path(weights_dir) / f"{run.weights_checksum}.safetensors")
            if run.weights_checksum
            else None,
            "model_name": None,
            "model_version": None,
            "deployment_status": None,
        }
        if published is not None:
            model, _ = published
            final |= {
                "model_name": model.model_name,
                "model_version": model.model_version,
                "deployment_status": model.deployment_status,
            }
        return {
            "config": config.model_dump(mode="json") | {"delta": config.delta, "privacy_unit": unit},
            "unit": unit,
            "rounds": rounds,
            "tenants": tenant_report,
            "final": final,
        }


def _is_this_runs(
    entry: ledger.HistoryEntry, contributions: set[str], config: RunConfig, window: tuple[str, str | None]
) -> bool:
    """Whether a ledger event was charged by this run (see the module docstring for the join)."""
    if entry.contribution_id is not None:
        return entry.contribution_id in contributions
    if entry.mechanism != CentralDpEvent.mechanism or not config.dp.central:
        return False
    start, end = window
    created = entry.created_at or ""
    return (
        entry.aggregation_round is not None
        and 1 <= entry.aggregation_round <= config.rounds
        and entry.noise_multiplier == config.central_noise_multiplier
        and entry.sample_rate == config.fraction
        and entry.clip_norm == config.central_clip_norm
        and created >= start
        and (end is None or created <= end)
    )


def _run_epsilon(entries: list[ledger.HistoryEntry], delta: float, policy: ledger.LedgerPolicy) -> float:
    """Epsilon of these events alone (one unit), with the ledger's accountant at the budget's delta."""
    if not entries:
        return 0.0
    events = [
        event_from_row(e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, e.clip_norm, e.unit)
        for e in entries
    ]
    return accounting.epsilon(events, delta, policy.accountant)


def _epsilon_at(entries: list[ledger.HistoryEntry], server_round: int, own_ids: set[int]) -> float:
    """The tenant's epsilon once round ``server_round`` of this run was charged (earlier runs included).

    This run's events are known by id (``own``), not by time stamps: a stamp without microseconds
    once sorted before its own run's start and cut the history short.
    """
    value = 0.0
    for entry in entries:
        if entry.id in own_ids and (entry.aggregation_round or 0) > server_round:
            break
        value = entry.epsilon_after
    return value
