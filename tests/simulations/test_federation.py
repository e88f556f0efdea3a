"""Preparing a simulated federation: fresh tenants (a name prefix per run) get user ids of their own,
and each node's synthetic data is labelled with exactly those ids."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from sqlalchemy import Engine, select

from fl_client.tasks.data_sources import source_from_config
from schema.db import transaction
from schema.models import User
from simulations.federation import prepare_federation


def _users(engine: Engine, organization_id: str) -> set[str]:
    with transaction(engine) as session:
        rows = session.scalars(select(User.id).where(User.organization_id == uuid.UUID(organization_id)))
        return {str(r) for r in rows}


def test_two_fresh_federations_in_one_database_each_get_their_own_users(
    engine: Engine, tmp_path: Path
) -> None:
    # Execute: the same seed and tenants twice, as two runs of `simulate --fresh-tenants` would.
    first = prepare_federation(
        engine, task="digits", tenants=2, seed=5, manifest_path=tmp_path / "a.json", name_prefix="sim5-a-"
    )
    second = prepare_federation(
        engine, task="digits", tenants=2, seed=5, manifest_path=tmp_path / "b.json", name_prefix="sim5-b-"
    )

    # Assert: distinct organizations with disjoint users, the same firm sizes; each node's records
    # carry its own organization's user ids (its consent filter can find them).
    assert {t.organization_id for t in first}.isdisjoint(t.organization_id for t in second)
    assert [t.users for t in first] == [t.users for t in second]
    for setups, manifest in ((first, "a.json"), (second, "b.json")):
        nodes = json.loads((tmp_path / manifest).read_text())["tenants"]
        for setup, node in zip(setups, nodes, strict=True):
            users = _users(engine, setup.organization_id)
            labelled = {r["user_id"] for r in source_from_config(node, "digits").records()}
            assert len(users) == setup.users and labelled and labelled <= users
    assert _users(engine, first[0].organization_id).isdisjoint(_users(engine, second[0].organization_id))


def test_without_a_prefix_the_manifest_and_ids_are_as_before(engine: Engine, tmp_path: Path) -> None:
    from simulations.synthetic import firm_user_ids

    setups = prepare_federation(engine, task="digits", tenants=1, seed=5, manifest_path=tmp_path / "m.json")

    (node,) = json.loads((tmp_path / "m.json").read_text())["tenants"]
    assert "user-namespace" not in node
    assert _users(engine, setups[0].organization_id) == set(firm_user_ids(5, 0))
