"""The publish gate: a model becomes the active version of its head only when it has earned it."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from fl_server.config import RunConfig
from fl_server.publish import PublishGate, publish_run
from schema.config import Settings
from schema.db import transaction
from schema.models import FlRun, ImmutableAuditLog, VamnModelRegistry


def _committed_run(engine: Engine, name: str, task: str = "digits") -> RunConfig:
    config = RunConfig(run_name=name, task=task, rounds=1, dp="off")
    with transaction(engine) as session:
        session.add(
            FlRun(
                name=name,
                task=task,
                config=config.model_dump(mode="json"),
                status="completed",
                last_completed_round=1,
                weights_checksum=name.encode().hex().ljust(64, "0")[:64],
                seen_checksums=[],
            )
        )
    return config


def _status(engine: Engine, name: str) -> str | None:
    with transaction(engine) as session:
        return session.scalar(
            select(VamnModelRegistry.deployment_status).where(VamnModelRegistry.model_version == f"{name}.r1")
        )


@pytest.mark.parametrize(
    ("metric", "fragment"),
    [(None, "no held-out accuracy"), (0.097, "no better than chance (0.1)"), (0.6, "misses the floor 0.85")],
)
def test_the_gate_refuses_models_that_have_not_earned_activation(
    engine: Engine, metric: float | None, fragment: str
) -> None:
    # Prepare
    config = _committed_run(engine, "weak")
    gate = PublishGate.from_settings(Settings(publish_min_metric={"digits": 0.85}))
    # Execute
    publication = publish_run(engine, config, metric, gate)
    # Assert: on record as rejected, with the reason in the audit log
    assert publication.deployment_status == "rejected"
    with transaction(engine) as session:
        reasons = [
            str(r.action_data)
            for r in session.scalars(
                select(ImmutableAuditLog).where(ImmutableAuditLog.action == "registry.rejected")
            )
        ]
    assert any(fragment in r for r in reasons), reasons


def test_a_better_model_activates_and_a_regression_beyond_the_margin_does_not(engine: Engine) -> None:
    # Prepare
    gate = PublishGate(max_regression=0.02)
    publish_run(engine, _committed_run(engine, "first"), 0.90, gate)
    # Execute
    slightly_worse = publish_run(engine, _committed_run(engine, "second"), 0.89, gate)
    much_worse = publish_run(engine, _committed_run(engine, "third"), 0.80, gate)
    # Assert
    assert _status(engine, "first") == "retired"
    assert slightly_worse.deployment_status == "active"
    assert much_worse.deployment_status == "rejected"


def test_lower_is_better_metrics_are_gated_the_other_way(engine: Engine) -> None:
    gate = PublishGate(min_metric={"time_estimation": 2.0})
    assert gate.refusal(_task("time_estimation"), 1.5, None) is None
    assert "misses the floor" in (gate.refusal(_task("time_estimation"), 2.5, None) or "")
    assert "regresses" in (gate.refusal(_task("time_estimation"), 1.9, 1.5) or "")


def _task(name: str):  # type: ignore[no-untyped-def]
    from fl_client.tasks import get_task

    return get_task(name)
