"""Tenants with users, built through the product's own admin functions, on each backend."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine

from consent_gate import records
from schema import directory
from schema.db import transaction

FL_CONSENTS = ("ai_training", "federated_learning", "vamn_contribution")


@dataclass
class Tenant:
    id: uuid.UUID
    users: list[uuid.UUID]


TenantFactory = Callable[..., Tenant]


@pytest.fixture
def make_tenant(engine: Engine) -> TenantFactory:
    """make_tenant(name, users=3, consents=FL_CONSENTS): an organization whose users all hold ``consents``."""

    def build(name: str, users: int = 3, consents: Iterable[str] = FL_CONSENTS) -> Tenant:
        granted = tuple(consents)
        with transaction(engine) as session:
            org = directory.create_organization(session, name)
            ids = []
            for n in range(users):
                user = directory.create_user(session, org.id, f"user{n}@{name.lower()}.example.com")
                for consent_type in granted:
                    records.grant(session, org.id, user.id, consent_type)
                ids.append(user.id)
        return Tenant(org.id, ids)

    return build
