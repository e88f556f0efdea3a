"""The consent gate: consents, data subject requests, and the consented-user snapshot.

Modules, one job each:
    policy   which consent types a model type needs (pure; ``ConsentPolicy``)
    records  grant / withdraw / read consents, with their history
    gate     eligibility, snapshot + digest, re-check on arrival
    lineage  which rounds and model versions trained on which snapshots
    dsr      data subject requests: file, list, process (export, erasure)
    erasure  the stores that hold a person: what each holds, what erasure does (register_store)

The federated-training server calls (each in its own session/transaction)::

    eligibility(session, organization_id, model_type, settings, policy=None)
        -> Eligibility(eligible, reason, consenting_users, code)
    batch_eligibility(session, organization_ids, model_type, settings, policy=None)
        -> {organization_id: Eligibility}   (one grouped query for the whole batch)
    take_snapshot(session, organization_id, model_type, policy=None)
        -> Snapshot(organization_id, model_type, required_consents, user_ids, digest, id, taken_at)
    record_snapshot_use(session, snapshot_id_or_digest, aggregation_round, run_id=None,
                        model_name=None, model_version=None, organization_id=None)
    record_snapshot_uses(session, [(organization_id, snapshot_id), ...], aggregation_round,
                         run_id=..., then={organization_id: [AuditEntry, ...]}) -> int
    recheck(session, organization_id, model_type, digest, policy=None) -> bool
    require_current(session, organization_id, model_type, digest, policy=None)
        # raises ConsentChangedError; its code, REJECTED_CONSENT_CHANGED, is the contribution status
    link_model_version(session, run_id, model_name, model_version) -> int
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consent_gate.gate import (
        REJECTED_CONSENT_CHANGED,
        Eligibility,
        Snapshot,
        batch_eligibility,
        compute_snapshot,
        eligibility,
        recheck,
        require_current,
        take_snapshot,
    )
    from consent_gate.lineage import (
        link_model_version,
        record_snapshot_use,
        record_snapshot_uses,
        user_lineage,
    )
    from consent_gate.policy import ConsentPolicy

#: Where each name above lives. A submodule is imported when one of its names is first used:
#: ``accute-fl dsr list`` imports ``schema.listings`` only, not the gate (and the ORM) it never runs.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "REJECTED_CONSENT_CHANGED",
            "Eligibility",
            "Snapshot",
            "batch_eligibility",
            "compute_snapshot",
            "eligibility",
            "recheck",
            "require_current",
            "take_snapshot",
        ),
        "gate",
    ),
    **dict.fromkeys(
        ("link_model_version", "record_snapshot_use", "record_snapshot_uses", "user_lineage"), "lineage"
    ),
    "ConsentPolicy": "policy",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'consent_gate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"consent_gate.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "REJECTED_CONSENT_CHANGED",
    "ConsentPolicy",
    "Eligibility",
    "Snapshot",
    "batch_eligibility",
    "compute_snapshot",
    "eligibility",
    "link_model_version",
    "recheck",
    "record_snapshot_use",
    "record_snapshot_uses",
    "require_current",
    "take_snapshot",
    "user_lineage",
]
