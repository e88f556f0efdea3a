"""The privacy ledger's tables (issue 3): ``privacy_budgets`` and ``privacy_ledger_events``.

Core ``Table``s, so ``accute-fl budget show`` reads budgets without the ORM; ``schema.models.privacy``
maps them. ``privacy/ledger.py`` is the only writer (see ``schema.models.privacy`` for what they hold).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    text,
)

from schema.metadata import METADATA, created_at_column, id_column, in_list, updated_at_column
from schema.types import UUIDType

#: The mechanisms a ledger event may record (privacy/events.py builds the events).
PRIVACY_MECHANISMS: tuple[str, ...] = ("dp_sgd", "central_gaussian", "non_private")

#: Units of privacy (privacy/events.py): what two neighbouring data sets differ in.
PRIVACY_UNITS: tuple[str, ...] = ("record", "user", "tenant")

privacy_budgets = Table(
    "privacy_budgets",
    METADATA,
    id_column(),
    Column("organization_id", UUIDType, ForeignKey("organizations.id"), nullable=False),
    Column("model_type", String(100), nullable=False),
    Column("unit", String(10), nullable=False),
    Column("epsilon_cap", Double),
    Column("delta", Double),
    # Cumulative RDP of the ledger's events at each order of ``rdp_orders_key``'s grid (float64 bytes).
    Column("rdp_curve", LargeBinary),
    Column("rdp_orders_key", String(32)),
    Column("event_count", Integer, nullable=False, server_default=text("0")),
    Column("last_round", Integer),
    created_at_column(),
    updated_at_column(),
    # The epsilon a charge computed for ``rdp_curve`` (revision 0021), stored with what it depends
    # on: the accountant and grid (``privacy.accountants.STORED_EPSILON_KEY``), the delta it was
    # evaluated at and the event count of the curve. A reader uses it only when all three match.
    Column("epsilon_spent", Double),
    Column("epsilon_delta", Double),
    Column("epsilon_key", String(64)),
    Column("epsilon_event_count", Integer),
    UniqueConstraint("organization_id", "model_type", "unit"),
    CheckConstraint(in_list("unit", PRIVACY_UNITS), name="unit"),
    CheckConstraint("epsilon_cap IS NULL OR epsilon_cap > 0", name="epsilon_cap"),
    CheckConstraint("delta IS NULL OR (delta > 0 AND delta < 1)", name="delta"),
    CheckConstraint("event_count >= 0", name="event_count"),
)

privacy_ledger_events = Table(
    "privacy_ledger_events",
    METADATA,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("organization_id", UUIDType, ForeignKey("organizations.id"), nullable=False),
    Column("model_type", String(100), nullable=False),
    Column("mechanism", String(50), nullable=False),
    Column("unit", String(10), nullable=False),
    Column("noise_multiplier", Double, nullable=False),
    Column("sample_rate", Double, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("clip_norm", Double),
    # The contribution this event paid for; one event per contribution at most.
    Column("contribution_id", UUIDType, ForeignKey("federated_learning_contributions.id"), unique=True),
    Column("aggregation_round", Integer),
    created_at_column(),
    CheckConstraint(in_list("mechanism", PRIVACY_MECHANISMS), name="mechanism"),
    CheckConstraint(in_list("unit", PRIVACY_UNITS), name="unit"),
    CheckConstraint("mechanism <> 'central_gaussian' OR unit = 'tenant'", name="central_unit"),
    CheckConstraint("mechanism <> 'dp_sgd' OR unit <> 'tenant'", name="local_unit"),
    CheckConstraint(
        "(mechanism = 'non_private' AND noise_multiplier = 0) OR (mechanism <> 'non_private' AND noise_multiplier > 0)",
        name="noise_multiplier",
    ),
    CheckConstraint("sample_rate > 0 AND sample_rate <= 1", name="sample_rate"),
    CheckConstraint("steps >= 0", name="steps"),
    CheckConstraint(
        "(mechanism = 'central_gaussian') = (clip_norm IS NOT NULL) AND (clip_norm IS NULL OR clip_norm > 0)",
        name="clip_norm",
    ),
    CheckConstraint("aggregation_round IS NULL OR aggregation_round >= 0", name="aggregation_round"),
    Index("idx_privacy_ledger_tenant", "organization_id", "model_type", "unit", "id"),
)
