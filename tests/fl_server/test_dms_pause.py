"""A tenant whose dead man's switch paused its training is not admitted to a round (status
``rejected_paused``, nothing charged), and takes part again once a platform admin reverses it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fl_server.governance import REJECTED_PAUSED
from orchestrator.keys import KeyRing, LocalFileKek
from orchestrator.security import dms_actions
from orchestrator.security.dead_man_switch import PAUSE_TRAINING, SwitchSettings
from schema import restrictions
from schema.db import transaction
from schema.models import FlRoundOutcome, PrivacyLedgerEvent, User
from schema.timeutil import utcnow
from tests.fl_server.test_admission import trained


def _fire_pause(engine: Any, organization_id: uuid.UUID, kek: Path) -> None:
    """The switch configured two hours ago with a one-hour interval and no grace: the first tick fires."""
    with transaction(engine) as session:
        admin = session.scalars(select(User.id).where(User.organization_id == organization_id)).first()
        assert admin is not None
        settings = SwitchSettings(
            admin_user_id=admin, heartbeat_interval_hours=1, grace_period_hours=0, actions=[PAUSE_TRAINING]
        )
        dms_actions.configure(session, organization_id, settings, now=utcnow() - timedelta(hours=2))
    fired = dms_actions.tick(engine, KeyRing(LocalFileKek(kek)), utcnow())
    assert [f["state"] for f in fired] == ["fired"]


def test_a_paused_tenant_sits_out_until_a_platform_admin_reverses_the_switch(
    make_federation: Any, tmp_path: Path
) -> None:
    # Prepare: three tenants; tenant 0's switch fires and pauses its training.
    fed = make_federation(tenants=3)
    paused_org = uuid.UUID(fed.tenants[0].organization_id)
    _fire_pause(fed.engine, paused_org, tmp_path / "kek.json")

    # Execute: a round with everyone sampled; then the reversal and another run.
    fed.run(fed.config(rounds=1, fraction=1.0, steps=2))
    first_trained = sorted(trained(fed, 1))
    with transaction(fed.engine) as session:
        rows = list(
            session.scalars(select(FlRoundOutcome).where(FlRoundOutcome.organization_id == paused_org))
        )
        charged = list(
            session.scalars(
                select(PrivacyLedgerEvent).where(PrivacyLedgerEvent.organization_id == paused_org)
            )
        )
        session.expunge_all()
    with transaction(fed.engine) as session:
        dms_actions.reverse(session, paused_org, now=utcnow(), by="platform_admin:test")
        still_paused = restrictions.paused_for_training(session, [paused_org])
    fed.grid.sent.clear()
    fed.run(fed.config(run_name="after-reverse", rounds=1, fraction=1.0, steps=2))

    # Assert: sat out with the reason, nothing charged; trains again after the reversal.
    assert first_trained == [fed.node_of(1), fed.node_of(2)]
    assert [(r.status, r.reason) for r in rows] == [(REJECTED_PAUSED, restrictions.PAUSED_REASON)]
    assert charged == []
    assert still_paused == set()
    assert sorted(trained(fed, 1)) == [fed.node_of(i) for i in range(3)]
