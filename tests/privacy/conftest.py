"""Fixtures of the privacy tests: the CLI runners (re-exported) and a tenant to charge."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine

from privacy.ledger import LedgerPolicy
from schema import directory
from schema.db import transaction
from tests.cli.conftest import cli, ready_cli  # noqa: F401  (fixtures used by test_privacy_commands)


@pytest.fixture
def policy() -> LedgerPolicy:
    return LedgerPolicy(default_epsilon_cap=8.0, default_delta=1e-5, accountant="rdp")


def make_org(engine: Engine, name: str | None = None) -> uuid.UUID:
    with transaction(engine) as session:
        return directory.create_organization(session, name or f"firm-{uuid.uuid4().hex[:8]}").id


@pytest.fixture
def org(engine: Engine) -> uuid.UUID:
    return make_org(engine)
