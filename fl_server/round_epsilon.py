"""The ε a progress line shows after a round: this run's own, and the lifetime ledger's, never mixed.

Both are the largest over the run's tenants, in the run's unit (the local DP-SGD unit; ``tenant``
for a central-DP-only run), read from the database alone so ``simulate`` (in process) and
``run-local`` (a separate process polling) print the same numbers:

- *this run*: the events this run charged a tenant up to the round, composed alone with the
  ledger's accountant at the tenant's budget delta. Local events are the ``dp_event`` of the run's
  round outcomes (every attempt: a charge stays when an attempt dies); central events are the
  tenant's central ledger events of the run's rounds charged since the run was created (the
  report's join). Within a run every event of the unit is the same mechanism, so the tenant charged
  most often has the largest ε: one accountant call per round.
- *lifetime*: the ledger's cumulative ε after the round, every run of the model type included:
  the largest ``epsilon_after`` of the run's local charges, or the central ledger's spent value.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fl_server.config import DpMode, RunConfig
from privacy import accounting, ledger
from privacy.events import CentralDpEvent, DpEvent, event_from_row, is_non_private
from schema.models import FlNodeBinding, FlRoundOutcome, FlRun, PrivacyLedgerEvent
from schema.timeutil import as_utc


@dataclass(frozen=True)
class RoundEpsilon:
    #: The largest ε this run's own events give a tenant (None: nothing charged yet).
    run: float | None
    #: The largest lifetime ε of a tenant on its ledger (None: nothing charged yet).
    lifetime: float | None
    unit: str

    def label(self) -> str:
        """``ε run 0.52 life 1.30`` (``-`` for nothing charged, ``∞`` for a non-private run)."""
        return f"ε run {_short(self.run)} life {_short(self.lifetime)}"


def _short(value: float | None) -> str:
    if value is None:
        return "-"
    return "∞" if math.isinf(value) else f"{value:.2f}"


def round_epsilon(
    session: Session, run_name: str, server_round: int, policy: ledger.LedgerPolicy
) -> RoundEpsilon | None:
    """The progress line's ε after ``server_round`` of the run (None when the run does not exist)."""
    run = session.scalar(select(FlRun).where(FlRun.name == run_name))
    if run is None:
        return None
    config = RunConfig.parse(dict(run.config))
    if config.dp == DpMode.CENTRAL:
        return _central(session, run, config, server_round, policy)
    unit = config.privacy_unit
    rows = session.execute(
        select(FlRoundOutcome.organization_id, FlRoundOutcome.dp_event, FlRoundOutcome.epsilon_after).where(
            FlRoundOutcome.run_id == run.id,
            FlRoundOutcome.aggregation_round <= server_round,
            FlRoundOutcome.dp_event.is_not(None),
        )
    ).all()
    events: dict[uuid.UUID, list[DpEvent]] = defaultdict(list)
    lifetime: float | None = None
    for organization_id, dp_event, epsilon_after in rows:
        # A JSON null passes ``IS NOT NULL`` on SQLite: skipped outcomes are dropped here too.
        if not dp_event or dp_event.get("unit", unit) != unit:
            continue
        events[organization_id].append(
            event_from_row(
                dp_event["mechanism"],
                float(dp_event.get("noise_multiplier", 0.0)),
                float(dp_event.get("sample_rate", 1.0)),
                int(dp_event.get("steps", 1)),
                None,
                unit,
            )
        )
        if epsilon_after is not None:
            lifetime = max(lifetime or 0.0, float(epsilon_after))
    if config.dp == DpMode.OFF and events:
        lifetime = math.inf
    return RoundEpsilon(_largest_run_epsilon(session, config, events, unit, policy), lifetime, unit)


def _central(
    session: Session, run: FlRun, config: RunConfig, server_round: int, policy: ledger.LedgerPolicy
) -> RoundEpsilon:
    organizations = list(
        session.scalars(select(FlNodeBinding.organization_id).where(FlNodeBinding.run_id == run.id))
    )
    if not organizations:
        return RoundEpsilon(None, None, CentralDpEvent.unit)
    query = select(PrivacyLedgerEvent).where(
        PrivacyLedgerEvent.organization_id.in_(organizations),
        PrivacyLedgerEvent.model_type == config.task,
        PrivacyLedgerEvent.mechanism == CentralDpEvent.mechanism,
        PrivacyLedgerEvent.contribution_id.is_(None),
        PrivacyLedgerEvent.aggregation_round <= server_round,
        PrivacyLedgerEvent.noise_multiplier == config.central_noise_multiplier,
        PrivacyLedgerEvent.sample_rate == config.fraction,
    )
    # Compared here, not in SQL: SQLite keeps a server-side stamp without microseconds, and a
    # bound datetime with them sorts after it as text.
    start = as_utc(run.created_at) if run.created_at is not None else None
    events: dict[uuid.UUID, list[DpEvent]] = defaultdict(list)
    for row in session.scalars(query):
        if start is not None and (row.created_at is None or as_utc(row.created_at) < start):
            continue
        events[row.organization_id].append(
            event_from_row(
                row.mechanism, row.noise_multiplier, row.sample_rate, row.steps, row.clip_norm, row.unit
            )
        )
    lifetime = max(
        (ledger.spent(session, org, config.task, policy=policy, unit=CentralDpEvent.unit) for org in events),
        default=None,
    )
    return RoundEpsilon(
        _largest_run_epsilon(session, config, events, CentralDpEvent.unit, policy),
        lifetime,
        CentralDpEvent.unit,
    )


def _largest_run_epsilon(
    session: Session,
    config: RunConfig,
    events: dict[uuid.UUID, list[DpEvent]],
    unit: str,
    policy: ledger.LedgerPolicy,
) -> float | None:
    if not events:
        return None
    counts = Counter({org: len(charged) for org, charged in events.items()})
    organization, _ = counts.most_common(1)[0]
    charged = events[organization]
    if any(is_non_private(e) for e in charged):
        return math.inf
    _, delta = ledger.cap_of(session, organization, config.task, unit, policy=policy)
    return accounting.epsilon(charged, delta, policy.accountant)
