"""`accute-fl runs list|show`: every run with its status, participants, reasons and ε, by name."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update

from orchestrator.cli import context
from schema.db import transaction
from schema.models import FlNodeBinding, FlRoundOutcome, FlRoundSummary, FlRun, Organization
from schema.timeutil import utcnow
from tests.cli.conftest import Runner


def _record_run(name: str, status: str = "running") -> tuple[uuid.UUID, uuid.UUID]:
    """One run of two tenants and one round: Acme accepted, Baker skipped for budget."""
    with transaction(context.ready_engine()) as session:
        acme = Organization(name=f"Acme {name}", billing_model="pay_as_you_go")
        baker = Organization(name=f"Baker {name}", billing_model="pay_as_you_go")
        session.add_all([acme, baker])
        session.flush()
        run = FlRun(
            name=name,
            task="digits",
            config={"rounds": 3, "round_timeout_s": 60.0},
            status=status,
            last_completed_round=1,
            seen_checksums=[],
        )
        session.add(run)
        session.flush()
        for node, org, tenant in ((1, acme, "tenant-0"), (2, baker, "tenant-1")):
            session.add(
                FlNodeBinding(run_id=run.id, node_id=str(node), organization_id=org.id, tenant=tenant)
            )
        session.add_all(
            [
                FlRoundOutcome(
                    run_id=run.id,
                    aggregation_round=1,
                    organization_id=acme.id,
                    tenant="tenant-0",
                    status="accepted",
                    sampled=True,
                    epsilon_after=1.25,
                ),
                FlRoundOutcome(
                    run_id=run.id,
                    aggregation_round=1,
                    organization_id=baker.id,
                    tenant="tenant-1",
                    status="rejected_budget",
                    sampled=False,
                    reason="epsilon would reach 9.1, over the cap 8",
                ),
                FlRoundSummary(
                    run_id=run.id,
                    aggregation_round=1,
                    metric_name="accuracy",
                    metric_value=0.5,
                    accepted=1,
                    weights_checksum="0" * 64,
                ),
            ]
        )
        return run.id, acme.id


def test_runs_list_and_show_name_tenants_reasons_and_epsilon(ready_cli: Runner) -> None:
    # Prepare
    _record_run("nightly")
    # Execute
    listed = ready_cli("runs", "list", "--json")
    shown = ready_cli("runs", "show", "nightly", "--json")
    table = ready_cli("runs", "show", "nightly")
    # Assert
    assert listed.code == 0, listed.err
    assert [(r["name"], r["status"], r["tenants"], r["last_completed_round"]) for r in listed.json()] == [
        ("nightly", "running", 2, 1)
    ]
    detail = shown.json()
    assert detail["rounds"][0]["metric"] == 0.5
    assert detail["rounds"][0]["tenants"]["tenant-1"]["reason"].startswith("epsilon would reach 9.1")
    by_tenant = {t["tenant"]: t for t in detail["tenants"]}
    assert by_tenant["tenant-0"]["organization"] == "Acme nightly"
    assert by_tenant["tenant-0"]["epsilon_after"] == 1.25 and by_tenant["tenant-0"]["rounds_accepted"] == 1
    assert by_tenant["tenant-1"]["not_accepted"] == {
        "1": "rejected_budget: epsilon would reach 9.1, over the cap 8"
    }
    assert "Baker nightly" in table.out and "rejected_budget" in table.out


def test_a_silent_running_run_is_shown_abandoned(ready_cli: Runner) -> None:
    # Prepare: a run whose last write is an hour old (round timeout 60 s: stale after 5 minutes)
    run_id, _ = _record_run("crashed")
    with transaction(context.ready_engine()) as session:
        session.execute(
            update(FlRun).where(FlRun.id == run_id).values(updated_at=utcnow() - timedelta(hours=1))
        )
    _record_run("fresh")
    # Execute
    statuses = {r["name"]: r["status"] for r in ready_cli("runs", "list", "--json").json()}
    # Assert
    assert statuses == {"crashed": "abandoned", "fresh": "running"}


def test_unknown_run_is_one_line_not_found(ready_cli: Runner) -> None:
    result = ready_cli("runs", "show", "nope")
    assert result.code == 3
    assert result.err.startswith("error: run 'nope' does not exist") and result.err.count("\n") == 1
