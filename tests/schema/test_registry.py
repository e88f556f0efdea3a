"""Publishing and promoting model versions in the VAMN registry, on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from schema import audit, registry
from schema.db import transaction
from schema.errors import ConflictError, InvalidInputError, NotFoundError


def _publish(engine: Engine, version: str, head: str = "quantitative") -> str:
    with transaction(engine) as session:
        row = registry.publish(
            session,
            model_name="time_estimation",
            model_version=version,
            head_type=head,
            weights_checksum="a" * 64,
        )
        return str(row.id)


def test_published_version_is_pending_and_serves_nothing(engine: Engine) -> None:
    _publish(engine, "1")
    with transaction(engine) as session:
        assert registry.active_for_head(session, "quantitative") is None


def test_activation_retires_the_previous_active_version_of_that_head_only(engine: Engine) -> None:
    # Prepare
    first, second = _publish(engine, "1"), _publish(engine, "2")
    other_head = _publish(engine, "1", head="semantic")
    with transaction(engine) as session:
        registry.activate(session, first)
        registry.activate(session, other_head)

    # Execute
    with transaction(engine) as session:
        registry.activate(session, second)

    # Assert
    with transaction(engine) as session:
        active = registry.active_for_head(session, "quantitative")
        assert active is not None and str(active.id) == second
        assert registry.get(session, first).deployment_status == registry.RETIRED
        assert registry.get(session, first).is_active is False
        semantic = registry.active_for_head(session, "semantic")
        assert semantic is not None and str(semantic.id) == other_head
        assert all(r.ok for r in audit.verify(session))


def test_rejected_version_never_serves(engine: Engine) -> None:
    version = _publish(engine, "1")
    with transaction(engine) as session:
        registry.reject(session, version, "metric regressed")
    with transaction(engine) as session:
        assert registry.get(session, version).deployment_status == registry.REJECTED
        assert registry.active_for_head(session, "quantitative") is None


def test_duplicate_and_bad_input_are_refused(engine: Engine) -> None:
    _publish(engine, "1")
    with pytest.raises(ConflictError):
        _publish(engine, "1")
    with pytest.raises(InvalidInputError):
        _publish(engine, "2", head="visual")
    with pytest.raises(NotFoundError), transaction(engine) as session:
        registry.get(session, "00000000-0000-0000-0000-000000000001")


def _model_events(engine: Engine) -> list[tuple[str, dict[str, object]]]:
    from sqlalchemy import select

    from schema.models import HubOutbox

    with transaction(engine) as session:
        rows = session.execute(
            select(HubOutbox.event_type, HubOutbox.payload, HubOutbox.organization_id)
            .where(HubOutbox.event_type.startswith("accute.model."))
            .order_by(HubOutbox.sequence)
        ).all()
    assert all(org is None for _, _, org in rows)  # platform events
    return [(kind, payload) for kind, payload, _ in rows]


def test_publish_and_activate_emit_published_and_promoted(engine: Engine) -> None:
    # Prepare
    first, second = _publish(engine, "1"), _publish(engine, "2")

    # Execute
    with transaction(engine) as session:
        registry.activate(session, first)
    with transaction(engine) as session:
        registry.activate(session, second)

    # Assert
    assert _model_events(engine) == [
        ("accute.model.published", _payload(first, "1")),
        ("accute.model.published", _payload(second, "2")),
        ("accute.model.promoted", _payload(first, "1") | {"retired_model_ids": []}),
        ("accute.model.promoted", _payload(second, "2") | {"retired_model_ids": [first]}),
    ]


def _payload(model_id: str, version: str) -> dict[str, object]:
    return {
        "model_id": model_id,
        "head_type": "quantitative",
        "model_version": version,
        "weights_checksum": "a" * 64,
    }


def test_a_publication_that_rolls_back_emits_nothing(engine: Engine) -> None:
    with pytest.raises(RuntimeError), transaction(engine) as session:
        registry.publish(
            session, model_name="m", model_version="9", head_type="semantic", weights_checksum="b" * 64
        )
        raise RuntimeError("the publication fails after the registry row")
    assert _model_events(engine) == []
