"""Privacy ledger (issue 3): budget caps and the append-only DP events per tenant, model type and unit.

Epsilon is per (organization, model type, unit of privacy): a record-level, a user-level and a
tenant-level guarantee are different statements and never compose into one number (migration 0006).

The events are the only truth about epsilon (invariant 2): a budget row caches the cumulative RDP
curve of its events so a charge costs O(orders), and the curve is rebuilt by replay whenever it
is missing or on another order grid. ``privacy/ledger.py`` is the only writer. The two tables are
``schema.tables.privacy``'s (Core, so ``budget show`` reads budgets without the ORM).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from schema.base import Base, created_at, in_list, uuid_pk
from schema.models.audit_log import ImmutableAuditLog
from schema.tables.privacy import PRIVACY_MECHANISMS, PRIVACY_UNITS, privacy_budgets, privacy_ledger_events
from schema.types import UUIDType

__all__ = [
    "ALERT_THRESHOLDS",
    "PRIVACY_MECHANISMS",
    "PRIVACY_UNITS",
    "PrivacyBudget",
    "PrivacyBudgetAlert",
    "PrivacyLedgerEvent",
]


class PrivacyBudget(Base):
    """The cap (epsilon, delta) of one tenant, model type and unit, and the state its ledger keeps.

    A NULL cap or delta means the platform default from settings. The row also serves as the lock
    that serializes charges to the ledger (locked by an upsert, see ``privacy/ledger.py``).
    """

    __table__ = privacy_budgets

    id: Mapped[uuid.UUID]
    organization_id: Mapped[uuid.UUID]
    model_type: Mapped[str]
    unit: Mapped[str]
    epsilon_cap: Mapped[float | None]
    delta: Mapped[float | None]
    #: Cumulative RDP of the ledger's events at each order of ``rdp_orders_key``'s grid (float64 bytes).
    rdp_curve: Mapped[bytes | None]
    rdp_orders_key: Mapped[str | None]
    event_count: Mapped[int]
    last_round: Mapped[int | None]
    created_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    #: The epsilon a charge computed for ``rdp_curve``, valid for its key, delta and event count.
    epsilon_spent: Mapped[float | None]
    epsilon_delta: Mapped[float | None]
    epsilon_key: Mapped[str | None]
    epsilon_event_count: Mapped[int | None]


class PrivacyLedgerEvent(Base):
    """One DP event charged to a tenant's ledger: never updated, never deleted."""

    __table__ = privacy_ledger_events

    id: Mapped[int]
    organization_id: Mapped[uuid.UUID]
    model_type: Mapped[str]
    mechanism: Mapped[str]
    unit: Mapped[str]
    noise_multiplier: Mapped[float]
    sample_rate: Mapped[float]
    steps: Mapped[int]
    clip_norm: Mapped[float | None]
    #: The contribution this event paid for; one event per contribution at most.
    contribution_id: Mapped[uuid.UUID | None]
    aggregation_round: Mapped[int | None]
    created_at: Mapped[datetime | None]


# Every charge appends an audit record, and ``schema/audit.py`` finds a chain's tail as the newest
# record of the organization by id. Without this index both backends read every record of the
# organization to find it (3 ms at 10,000 records on PostgreSQL here, growing linearly); with it,
# one index probe. Added by the privacy migration (0002) because the ledger is what makes chains long.
Index("idx_audit_org_id", ImmutableAuditLog.organization_id, ImmutableAuditLog.id)


#: Thresholds a budget alert records: ``near_cap`` at ``privacy.ledger.NEAR_CAP_SHARE`` of the cap,
#: ``exhausted`` at the cap.
ALERT_THRESHOLDS: tuple[str, ...] = ("near_cap", "exhausted")


class PrivacyBudgetAlert(Base):
    """A budget crossing a threshold of its cap, recorded once per (ledger, threshold, cap).

    Written by ``privacy/alerts.py`` in the transaction of the charge (or cap change) that crossed
    it; a raised cap is a new cap, so crossing its thresholds alerts again. Never updated.
    """

    __tablename__ = "privacy_budget_alerts"
    __table_args__ = (
        UniqueConstraint(
            "organization_id",
            "model_type",
            "unit",
            "threshold",
            "epsilon_cap",
            name="uq_privacy_budget_alerts_once",
        ),
        CheckConstraint(in_list("threshold", ALERT_THRESHOLDS), name="threshold"),
        CheckConstraint(in_list("unit", PRIVACY_UNITS), name="unit"),
        Index("idx_privacy_budget_alerts_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = mapped_column(UUIDType, ForeignKey("organizations.id"))
    model_type: Mapped[str] = mapped_column(String(100))
    unit: Mapped[str] = mapped_column(String(10))
    threshold: Mapped[str] = mapped_column(String(20))
    #: The ledger's epsilon right after the crossing, and the cap and delta it was measured against.
    epsilon: Mapped[float] = mapped_column(Double)
    epsilon_cap: Mapped[float] = mapped_column(Double)
    delta: Mapped[float] = mapped_column(Double)
    #: The charge that crossed it; None when a lowered cap did.
    ledger_event_id: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), ForeignKey("privacy_ledger_events.id")
    )
    created_at: Mapped[datetime | None] = created_at()
