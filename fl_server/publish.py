"""Publishing a run's global model to the VAMN registry, promoted only if it does not regress.

The weights are already in the content-addressed store (every round's are); publishing adds a
registry row for the run's final round and compares its evaluation with the active version of
the same head: better or equal activates it (the old one retires), worse keeps it on record as
rejected. Lineage of the consent snapshots that trained it is linked to the new version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import Engine, select

import consent_gate
from fl_client.tasks import get_task
from fl_server.config import RunConfig
from schema import registry
from schema.db import transaction
from schema.models import FlPublishedModel, FlRun


@dataclass(frozen=True)
class Publication:
    model_id: str
    model_name: str
    model_version: str
    head_type: str
    weights_checksum: str
    deployment_status: str
    metric: float | None


def publish_run(engine: Engine, config: RunConfig, metric: float | None) -> Publication:
    task = get_task(config.task)
    with transaction(engine) as session:
        run = session.scalar(select(FlRun).where(FlRun.name == config.run_name))
        if run is None or run.weights_checksum is None:
            raise RuntimeError(f"run {config.run_name} has no committed weights to publish")
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
            reference = session.scalar(
                select(FlPublishedModel).where(FlPublishedModel.registry_id == active.id)
            )
        regresses = (
            reference is not None
            and reference.metric_name == task.metric.name
            and reference.metric_value is not None
            and (metric is None or task.metric.better(reference.metric_value, metric))
        )
        if regresses:
            assert reference is not None
            registry.reject(
                session, row.id, f"{task.metric.name} {metric} regresses against {reference.metric_value}"
            )
        else:
            registry.activate(session, row.id)
        session.add(
            FlPublishedModel(
                registry_id=row.id,
                run_id=run.id,
                aggregation_round=run.last_completed_round,
                metric_name=task.metric.name,
                metric_value=None if metric is None or math.isnan(metric) else metric,
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
        )
