"""Publishing a run's global model to the VAMN registry, activated only past a quality gate.

The weights are already in the content-addressed store (every round's are); publishing adds a
registry row for the run's final round. It becomes the active version of its head only if the
gate passes (``PublishGate``): it has a held-out metric at all, beats chance for a classifier,
reaches the configured floor for its model type, and does not fall more than the allowed margin
under the active version. Otherwise it stays on record as ``rejected`` with the reason (audited
by the registry) — a chance-level DP model was once published ``active``. Lineage of the consent
snapshots that trained it is linked to the new version either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

import consent_gate
from fl_client.tasks import TaskSpec, get_task
from fl_server.config import RunConfig
from orchestrator.security import threat_intel
from schema import registry
from schema.config import Settings
from schema.db import transaction
from schema.models import FlPublishedModel, FlRoundSummary, FlRun


@dataclass(frozen=True)
class PublishGate:
    """What a model must show to be activated (Settings: ``ACCUTE_PUBLISH_MIN_METRIC``,
    ``ACCUTE_PUBLISH_MAX_REGRESSION``)."""

    min_metric: Mapping[str, float] = field(default_factory=dict)
    max_regression: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PublishGate:
        return cls(dict(settings.publish_min_metric), settings.publish_max_regression)

    def refusal(self, task: TaskSpec, metric: float | None, active_metric: float | None) -> str | None:
        """Why the model must not be activated, or None when it may."""
        name = task.metric.name
        if metric is None or math.isnan(metric):
            return f"no held-out {name} to judge it by; promote it by hand if you trust it"
        higher = task.metric.higher_is_better
        chance = chance_level(task)
        if chance is not None and metric <= chance:
            return f"held-out {name} {metric:.4g} is no better than chance ({chance:.4g})"
        floor = self.min_metric.get(task.name)
        if floor is not None and (metric < floor if higher else metric > floor):
            return f"held-out {name} {metric:.4g} misses the floor {floor:g} set for {task.name}"
        if active_metric is not None:
            shortfall = (active_metric - metric) if higher else (metric - active_metric)
            if shortfall > self.max_regression:
                return (
                    f"held-out {name} {metric:.4g} regresses against the active version's {active_metric:.4g} "
                    f"(allowed {self.max_regression:g})"
                )
        return None


def chance_level(task: TaskSpec) -> float | None:
    """Accuracy of a uniform guess for a classifier's metric; None for other metrics."""
    classes = getattr(getattr(task.encoder, "label", None), "classes", None)
    if task.metric.higher_is_better and task.metric.name == "accuracy" and classes:
        return 1.0 / len(classes)
    return None


@dataclass(frozen=True)
class Publication:
    model_id: str
    model_name: str
    model_version: str
    head_type: str
    weights_checksum: str
    deployment_status: str
    metric: float | None
    #: Why the publish gate did not activate it (None: activated).
    refusal: str | None = None


def publish_run(
    engine: Engine, config: RunConfig, metric: float | None, gate: PublishGate | None = None
) -> Publication:
    """Publish a committed run in a transaction of its own (tests and tools; a server publishes in
    the transaction that completes the run, ``publisher``)."""
    with transaction(engine) as session:
        run = session.scalar(select(FlRun).where(FlRun.name == config.run_name))
        if run is None or run.weights_checksum is None:
            raise RuntimeError(f"run {config.run_name} has no committed weights to publish")
        return publish_in(session, config, run, metric, gate)


def publisher(config: RunConfig, gate: PublishGate | None = None) -> Callable[[Session, FlRun], Publication]:
    """``publish(session, run)`` for ``Governor.complete_run``: the run's final committed round,
    with the held-out metric its round summary recorded."""

    def publish(session: Session, run: FlRun) -> Publication:
        if run.weights_checksum is None:
            raise RuntimeError(f"run {config.run_name} has no committed weights to publish")
        metric = session.scalar(
            select(FlRoundSummary.metric_value).where(
                FlRoundSummary.run_id == run.id,
                FlRoundSummary.aggregation_round == run.last_completed_round,
            )
        )
        return publish_in(session, config, run, metric, gate)

    return publish


def publish_in(
    session: Session, config: RunConfig, run: FlRun, metric: float | None, gate: PublishGate | None = None
) -> Publication:
    """Register the run's final weights and activate them if the gate passes, in ``session``."""
    task = get_task(config.task)
    gate = gate or PublishGate()
    assert run.weights_checksum is not None
    version = f"{run.name}.r{run.last_completed_round}"
    row = registry.publish(
        session,
        model_name=config.published_model_name,
        model_version=version,
        head_type=task.head_type,
        weights_checksum=run.weights_checksum,
    )
    active = registry.active_for_head(session, task.head_type)
    reference = None
    if active is not None:
        reference = session.scalar(select(FlPublishedModel).where(FlPublishedModel.registry_id == active.id))
    active_metric = (
        reference.metric_value
        if reference is not None and reference.metric_name == task.metric.name
        else None
    )
    refusal = gate.refusal(task, metric, active_metric)
    listed = threat_intel.hash_listed(session, run.weights_checksum)
    if listed is not None:
        refusal = f"the weights are listed in threat intelligence ({listed}); not activated"
    if refusal is not None:
        registry.reject(session, row.id, refusal)
    else:
        registry.activate(session, row.id)
    session.add(
        FlPublishedModel(
            registry_id=row.id,
            run_id=run.id,
            aggregation_round=run.last_completed_round,
            metric_name=task.metric.name,
            metric_value=None if metric is None or not math.isfinite(metric) else metric,
            higher_is_better=task.metric.higher_is_better,
        )
    )
    consent_gate.link_model_version(session, run.name, row.model_name, row.model_version)
    return Publication(
        str(row.id),
        row.model_name,
        row.model_version,
        row.head_type,
        row.weights_checksum,
        row.deployment_status or "",
        metric,
        refusal,
    )
