"""What a fired dead man's switch forbids an organization, for the code that must respect it.

Federated admission (``fl_server.governance``) skips organizations whose training is paused; the
cascade (``orchestrator.cascade``) uses neither the provider configs nor the platform fallback of
an organization that has them disabled. Both read ``dead_man_switch_firings`` rows that are not
reversed (``orchestrator.security.dms_actions`` writes them); this module sits in ``schema`` so
that ``fl_server`` reads the flag without importing the orchestrator.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.models import DeadManSwitchFiring

#: The reason an admission skip names.
PAUSED_REASON = "training paused by the organization's dead man's switch (a platform admin may reverse it)"


@dataclass(frozen=True)
class Restrictions:
    training_paused: bool = False
    providers_disabled: bool = False
    fallback_disabled: bool = False


NONE = Restrictions()


def paused_for_training(session: Session, organization_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these organizations may not train now (one query for the batch)."""
    ids = list(set(organization_ids))
    if not ids:
        return set()
    query = select(DeadManSwitchFiring.organization_id).where(
        DeadManSwitchFiring.organization_id.in_(ids),
        DeadManSwitchFiring.reversed_at.is_(None),
        DeadManSwitchFiring.training_paused.is_(True),
    )
    return set(session.scalars(query))


def of(session: Session, organization_id: uuid.UUID) -> Restrictions:
    """The organization's restrictions now (``NONE`` when its switch has not fired)."""
    row = session.execute(
        select(
            DeadManSwitchFiring.training_paused,
            DeadManSwitchFiring.providers_disabled,
            DeadManSwitchFiring.fallback_disabled,
        ).where(
            DeadManSwitchFiring.organization_id == organization_id, DeadManSwitchFiring.reversed_at.is_(None)
        )
    ).first()
    if row is None:
        return NONE
    return Restrictions(bool(row[0]), bool(row[1]), bool(row[2]))
