"""Governance lines in the ServerApp's log: what ``flwr log <run-id>`` shows an operator.

Flower 1.42 runs a deployed ServerApp in a ``flwr-serverapp`` process that mirrors its stdout and
stderr into a queue, and a thread uploads that queue to the SuperLink (``flwr.supercore.logger``:
``mirror_output_to_queue``, ``start_log_uploader``); ``flwr log`` reads it back. Flower's own
lines get there through the ``flwr`` logger's console handler. Ours are logged under ``flwr.accute``,
a child of that logger: they reach the same handler once (no handler of our own, so nothing is
printed twice) and follow Flower's level, so ``accute-fl simulate`` (which quiets the ``flwr``
logger to WARNING for its progress line) neither prints them nor pays for them.

Per round: the tenants admitted, each tenant that was skipped or not accepted with the reason its
round outcome recorded, and each bound tenant's ε in every unit the run charges — this run's own
events composed alone, beside the lifetime ledger value. At the end: the published model version,
or the publish gate's refusal.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, func, select

from fl_server.config import DpMode, RunConfig
from fl_server.governance import ACCEPTED, Tenant
from fl_server.report import _is_this_runs as is_this_runs
from privacy import accounting, ledger
from privacy.events import DpEvent, event_from_row, is_non_private
from schema.db import transaction
from schema.models import FlRoundOutcome, FlRun

#: Flower's logger's child: Flower's handler, Flower's level, Flower's log stream.
log = logging.getLogger("flwr.accute")

#: Names listed on the "admitted" line before it says "+N more".
MAX_NAMES = 20


def run_epsilon(events: Iterable[DpEvent], delta: float, accountant: str) -> float:
    """ε of these events alone (one unit) with the ledger's accountant; +inf after a non-private one."""
    events = list(events)
    if not events:
        return 0.0
    if any(is_non_private(e) for e in events):
        return math.inf
    return accounting.epsilon(events, delta, accountant)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f" +{len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")


def _eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4f}"


class GovernanceLog:
    """Writes the governance lines of one run; keeps this run's charged events per tenant and unit."""

    def __init__(self, engine: Engine, config: RunConfig, policy: ledger.LedgerPolicy) -> None:
        self.engine = engine
        self.config = config
        self.policy = policy
        self.events: dict[str, dict[str, list[DpEvent]]] = defaultdict(lambda: defaultdict(list))
        self._seeded: set[str] = set()
        self._resumed = False
        self._started_at: int | None = None
        self._nodes_logged: set[int] = set()

    @staticmethod
    def enabled() -> bool:
        return log.isEnabledFor(logging.INFO)

    def _started(self, server_round: int, attempt: int) -> None:
        """The run's first line, at its first committed round in this process."""
        self._started_at = server_round
        self._resumed = server_round > 1 or attempt > 1
        c = self.config
        log.info(
            "accute run %s: task %s, %d rounds, dp %s (unit %s), fraction %g%s",
            c.run_name,
            c.task,
            c.rounds,
            c.dp.value,
            "+".join(self._units()),
            c.fraction,
            f", resumed at round {server_round} (attempt {attempt})" if self._resumed else "",
        )

    def round(
        self,
        server_round: int,
        admitted: list[str],
        charged: Mapping[str, list[DpEvent]],
        tenants: Iterable[Tenant],
        skipped_nodes: Mapping[int, str],
        attempt: int = 1,
    ) -> None:
        """Log one committed round (only when Flower's logger shows INFO: nothing is read otherwise)."""
        tenants = sorted(tenants, key=lambda t: t.name)
        if not self.enabled():
            return
        if self._started_at is None:
            self._started(server_round, attempt)
        with transaction(self.engine) as session:
            # A tenant read from the ledger already has this round's charges.
            from_ledger = self._seed(session, tenants)
            self._add({n: e for n, e in charged.items() if n not in from_ledger})
            prefix = f"round {server_round}/{self.config.rounds}:"
            log.info("%s admitted %d tenant(s): %s", prefix, len(admitted), _names(admitted) or "none")
            for node_id, why in sorted(skipped_nodes.items()):
                if node_id not in self._nodes_logged:
                    self._nodes_logged.add(node_id)
                    log.info("%s skipped node %s: %s", prefix, node_id, why)
            outcomes = self._outcomes(session, server_round)
            for tenant in tenants:
                status, reason, sampled = outcomes.get(tenant.name, ("", None, True))
                if status == ACCEPTED:
                    fate = "accepted"
                elif not status:
                    fate = "admitted, not sampled" if tenant.name in admitted else "no outcome"
                else:
                    what = "skipped" if not sampled else "not accepted"
                    fate = f"{what} ({status}: {reason or 'no reason recorded'})"
                log.info("%s %s %s; %s", prefix, tenant.name, fate, self._epsilon_text(session, tenant))

    def finished(self, publication: Any) -> None:
        if publication is None:
            log.info("accute run %s: completed; nothing was published", self.config.run_name)
            return
        refusal = getattr(publication, "refusal", None)
        if refusal:
            log.info(
                "accute run %s: model %s version %s recorded but not activated (%s): %s",
                self.config.run_name,
                publication.model_name,
                publication.model_version,
                publication.deployment_status,
                refusal,
            )
        else:
            log.info(
                "accute run %s: published model %s version %s (%s)",
                self.config.run_name,
                publication.model_name,
                publication.model_version,
                publication.deployment_status,
            )

    # --- internals ----------------------------------------------------------------------------

    def _units(self) -> list[str]:
        units: list[str] = []
        if self.config.dp != DpMode.CENTRAL:
            units.append(self.config.privacy_unit)
        if self.config.dp.central:
            units.append("tenant")
        return units

    def _add(self, charged: Mapping[str, list[DpEvent]]) -> None:
        for name, events in charged.items():
            for event in events:
                self.events[name][event.unit].append(event)

    def _seed(self, session: Any, tenants: list[Tenant]) -> set[str]:
        """A resumed run: this run's events so far come from the ledger (once per tenant); returns
        the tenants read."""
        fresh = [t for t in tenants if t.name not in self._seeded]
        self._seeded.update(t.name for t in fresh)
        run = session.scalar(select(FlRun).where(FlRun.name == self.config.run_name))
        if not self._resumed or not fresh or run is None:
            return set()
        contributions = {
            str(c)
            for c in session.scalars(
                select(FlRoundOutcome.contribution_id).where(FlRoundOutcome.run_id == run.id)
            )
            if c is not None
        }
        window = (self._iso(run.created_at), None)
        for tenant in fresh:
            for entry in ledger.history(
                session, tenant.organization_id, self.config.task, policy=self.policy
            ):
                if is_this_runs(entry, contributions, self.config, window):
                    self.events[tenant.name][entry.unit].append(
                        event_from_row(
                            entry.mechanism,
                            entry.noise_multiplier,
                            entry.sample_rate,
                            entry.steps,
                            entry.clip_norm,
                            entry.unit,
                        )
                    )
        return {t.name for t in fresh}

    @staticmethod
    def _iso(moment: Any) -> str:
        from schema.timeutil import iso

        return iso(moment) or ""

    def _outcomes(self, session: Any, server_round: int) -> dict[str, tuple[str, str | None, bool]]:
        """The round's outcome per tenant, of the latest attempt that wrote the round."""
        run_id = session.scalar(select(FlRun.id).where(FlRun.name == self.config.run_name))
        attempt = session.scalar(
            select(func.max(FlRoundOutcome.attempt)).where(
                FlRoundOutcome.run_id == run_id, FlRoundOutcome.aggregation_round == server_round
            )
        )
        rows = session.execute(
            select(
                FlRoundOutcome.tenant, FlRoundOutcome.status, FlRoundOutcome.reason, FlRoundOutcome.sampled
            ).where(
                FlRoundOutcome.run_id == run_id,
                FlRoundOutcome.aggregation_round == server_round,
                FlRoundOutcome.attempt == attempt,
            )
        )
        return {tenant: (status, reason, bool(sampled)) for tenant, status, reason, sampled in rows}

    def _epsilon_text(self, session: Any, tenant: Tenant) -> str:
        parts = []
        for unit in self._units():
            _, delta = ledger.cap_of(
                session, tenant.organization_id, self.config.task, unit, policy=self.policy
            )
            lifetime = ledger.spent(
                session, tenant.organization_id, self.config.task, policy=self.policy, unit=unit
            )
            this_run = run_epsilon(self.events[tenant.name][unit], delta, self.policy.accountant)
            parts.append(
                f"epsilon this run {_eps(this_run)}, lifetime {_eps(lifetime)} ({unit} level, delta {delta:g})"
            )
        return "; ".join(parts)
