"""The ServerApp's governance lines (what `flwr log` shows) and its run config check, on both backends.

The ServerApp is called the way Flower's runtimes call it (``ServerApp(grid, context)``) on the
in-process grid with the real ClientApp; its lines are read from Flower's own console handler,
the handler whose stream a deployed ``flwr-serverapp`` mirrors to the SuperLink.
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict
from flwr.common.logger import console_handler
from sqlalchemy import func, select

from fl_client import protocol
from fl_server.app import make_server_app
from fl_server.report import build_report
from fl_server.strategy import RoundRecord
from privacy import ledger
from schema.config import Settings
from schema.db import transaction
from schema.errors import InvalidInputError
from schema.models import FlRoundOutcome, FlRun, PrivacyLedgerEvent
from tests.fl_server.conftest import Federation
from tests.fl_server.test_governed_strategy import independent_epsilon

GHOST_NODE = 4242


@pytest.fixture
def flower_stream() -> Iterator[io.StringIO]:
    """Flower's console handler writing to a buffer, at Flower's default levels (INFO shown)."""
    stream = io.StringIO()
    flwr = logging.getLogger("flwr")
    level, old_stream = flwr.level, console_handler.stream
    flwr.setLevel(logging.DEBUG)
    console_handler.setStream(stream)
    try:
        yield stream
    finally:
        console_handler.setStream(old_stream)
        flwr.setLevel(level)


def settings_for(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, weights_dir=tmp_path / "weights")


def context(run_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def run_config(fed: Federation, name: str, **overrides: Any) -> dict[str, Any]:
    """The flat, dashed run config Flower hands the ServerApp."""
    values = fed.config(run_name=name, **overrides).as_flower()
    return {key.replace("_", "-"): value for key, value in values.items()}


def governance_lines(stream: io.StringIO) -> list[str]:
    text = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())
    messages = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("INFO")]
    return [m for m in messages if m.startswith(("accute run", "round "))]


def test_server_app_logs_admission_skips_epsilon_and_publication_once(
    make_federation: Callable[..., Federation], database_url: str, tmp_path: Path, flower_stream: io.StringIO
) -> None:
    # Prepare: tenant-0 can afford two rounds in all; a node names an organization that does not
    # exist; an earlier run already charged every tenant once (so this run's epsilon is not the
    # lifetime one).
    one_round = independent_epsilon([(1.1, 0.1, 10)], 1e-5)
    two, three = (independent_epsilon([(1.1, 0.1, 10 * k)], 1e-5) for k in (2, 3))
    fed = make_federation(caps={0: (two + three) / 2})
    ghost_org = uuid.uuid4()
    fed.grid.contexts[GHOST_NODE] = Context(
        run_id=1,
        node_id=GHOST_NODE,
        node_config=fed.grid.contexts[fed.node_of(1)].node_config
        | {protocol.NODE_ORGANIZATION: str(ghost_org), protocol.NODE_TENANT: "ghost"},
        state=RecordDict(),
        run_config={},
    )
    settings = settings_for(database_url, tmp_path)
    app = make_server_app(settings=settings)
    app(fed.grid, context(run_config(fed, "earlier", rounds=1)))
    flower_stream.truncate(0)
    flower_stream.seek(0)

    # Execute
    app(fed.grid, context(run_config(fed, "logged", rounds=2)))

    # Assert: admitted, skipped with reasons, epsilon this run beside lifetime, the publication.
    lines = governance_lines(flower_stream)
    assert len(lines) == len(set(lines)), "a governance line was written twice"
    assert lines[0].startswith("accute run logged: task digits, 2 rounds, dp local (unit record)")
    assert "round 1/2: admitted 3 tenant(s): tenant-0, tenant-1, tenant-2" in lines
    assert "round 2/2: admitted 2 tenant(s): tenant-1, tenant-2" in lines
    assert (
        f"round 1/2: skipped node {GHOST_NODE}: node {GHOST_NODE} names organization {ghost_org}, "
        "which does not exist" in lines
    )
    budget_line = next(line for line in lines if line.startswith("round 2/2: tenant-0 "))
    assert "skipped (rejected_budget: record-level epsilon would reach" in budget_line
    report = build_report(
        fed.engine, "logged", tmp_path / "weights", ledger.LedgerPolicy.from_settings(settings)
    )
    for name in ("tenant-0", "tenant-1", "tenant-2"):
        tenant = report["tenants"][name]
        line = next(line for line in lines if line.startswith(f"round 2/2: {name} "))
        assert (
            f"epsilon this run {tenant['epsilon_run']:.4f}, lifetime {tenant['epsilon_spent']:.4f} "
            "(record level, delta 1e-05)" in line
        )
        assert tenant["epsilon_run"] < tenant["epsilon_spent"]
    assert report["tenants"]["tenant-0"]["epsilon_run"] == pytest.approx(one_round, rel=1e-6)
    assert lines[-1].startswith(
        "accute run logged: model digits version logged.r2 recorded but not activated"
    )
    assert "no held-out accuracy" in lines[-1]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("rounds", 0, "run config rounds=0 is invalid: allowed an integer >= 1 and <= 10000"),
        ("dp", "maybe", "run config dp='maybe' is invalid: allowed one of off, local, central, both"),
        ("fraction", 2.0, "run config fraction=2.0 is invalid: allowed a number > 0 and <= 1"),
    ],
)
def test_bad_run_config_fails_the_server_app_first_with_one_line(
    make_federation: Callable[..., Federation],
    database_url: str,
    tmp_path: Path,
    key: str,
    value: Any,
    expected: str,
) -> None:
    # Prepare
    fed = make_federation()
    config = run_config(fed, "bad") | {key: value}

    # Execute
    with pytest.raises(InvalidInputError) as failure:
        make_server_app(settings=settings_for(database_url, tmp_path))(fed.grid, context(config))

    # Assert: one line naming key, value and range; no node asked, no run, nothing charged.
    assert str(failure.value) == expected
    assert fed.grid.sent == []
    with transaction(fed.engine) as session:
        assert session.scalar(select(func.count()).select_from(FlRun)) == 0
        assert session.scalar(select(func.count()).select_from(FlRoundOutcome)) == 0
        assert session.scalar(select(func.count()).select_from(PrivacyLedgerEvent)) == 0


def test_governance_lines_stay_quiet_when_flower_logs_warnings_only(
    make_federation: Callable[..., Federation], database_url: str, tmp_path: Path, flower_stream: io.StringIO
) -> None:
    # Prepare: `accute-fl simulate` sets Flower's logger to WARNING for its own progress line.
    fed = make_federation(tenants=1)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    # Execute
    make_server_app(settings=settings_for(database_url, tmp_path))(
        fed.grid, context(run_config(fed, "quiet", rounds=1))
    )

    # Assert: the run completed, and Flower's handler got none of its lines.
    with transaction(fed.engine) as session:
        assert session.scalar(select(FlRun.status).where(FlRun.name == "quiet")) == "completed"
    assert "accute run" not in flower_stream.getvalue()


def test_a_resumed_server_logs_this_runs_epsilon_from_the_ledger(
    make_federation: Callable[..., Federation], database_url: str, tmp_path: Path, flower_stream: io.StringIO
) -> None:
    # Prepare: an earlier run charged both tenants; the logged run's server dies after round 1.
    fed = make_federation(tenants=2)
    settings = settings_for(database_url, tmp_path)
    make_server_app(settings=settings)(fed.grid, context(run_config(fed, "earlier", rounds=1)))

    def crash(record: RoundRecord) -> None:
        if record.server_round == 1:
            raise KeyboardInterrupt("server killed")

    with pytest.raises(KeyboardInterrupt):
        make_server_app(settings=settings, on_round=crash)(
            fed.grid, context(run_config(fed, "resumed", rounds=2))
        )
    flower_stream.truncate(0)
    flower_stream.seek(0)

    # Execute: a new server process resumes the run at round 2.
    make_server_app(settings=settings)(fed.grid, context(run_config(fed, "resumed", rounds=2)))

    # Assert: round 2's epsilon this run covers rounds 1 and 2 of this run only (not the earlier run).
    lines = governance_lines(flower_stream)
    assert lines[0].startswith("accute run resumed: ") and "resumed at round 2 (attempt 2)" in lines[0]
    report = build_report(
        fed.engine, "resumed", tmp_path / "weights", ledger.LedgerPolicy.from_settings(settings)
    )
    for name, tenant in report["tenants"].items():
        line = next(line for line in lines if line.startswith(f"round 2/2: {name} "))
        assert f"epsilon this run {tenant['epsilon_run']:.4f}, lifetime {tenant['epsilon_spent']:.4f}" in line
        assert len(tenant["dp_events"]) == 2 and tenant["epsilon_run"] < tenant["epsilon_spent"]
