"""The governed strategy with the real ClientApp on an in-process grid, on both backends."""

from __future__ import annotations

import uuid

import dp_accounting
import numpy as np
import pytest
from flwr.app import Message
from sqlalchemy import func, select

from aggregation.flwr_adapter import record_from_arrays
from consent_gate.records import withdraw
from fl_client import protocol
from schema import audit
from schema.db import transaction
from schema.errors import ConflictError
from schema.models import (
    FederatedLearningContribution,
    FlRoundOutcome,
    FlRun,
    ImmutableAuditLog,
    PrivacyLedgerEvent,
    User,
)
from tests.fl_server.conftest import Federation


def outcomes(fed: Federation) -> dict[tuple[int, str], str]:
    with transaction(fed.engine) as session:
        rows = session.scalars(select(FlRoundOutcome))
        return {(r.aggregation_round, r.tenant): r.status for r in rows}


def independent_epsilon(events: list[tuple[float, float, int]], delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    for z, q, steps in events:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return accountant.get_epsilon(delta)


def test_honest_round_accepts_everyone_and_charges_the_ledger_exactly(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    fed = make_federation()
    config = fed.config()

    # Execute
    result = fed.run(config)

    # Assert: one accepted contribution per tenant per round.
    assert outcomes(fed) == {(r, f"tenant-{i}"): "accepted" for r in (1, 2) for i in range(3)}
    with transaction(fed.engine) as session:
        contributions = list(session.scalars(select(FederatedLearningContribution)))
        assert len(contributions) == 6
        assert {c.status for c in contributions} == {"accepted"}
        assert all(abs(float(c.contribution_weight) - 1 / 3) < 0.01 for c in contributions)
        run = session.scalar(select(FlRun))
        assert run is not None and run.last_completed_round == 2 and run.status == "completed"
        events = list(session.scalars(select(PrivacyLedgerEvent)))
        assert len(events) == 6
        outcome_eps = {
            r.tenant: r.epsilon_after
            for r in session.scalars(select(FlRoundOutcome).where(FlRoundOutcome.aggregation_round == 2))
        }
    # The ledger's epsilon after two rounds equals an independent accountant's for the same events.
    expected = independent_epsilon([(1.1, 0.1, 10)] * 2, 1e-5)
    for eps in outcome_eps.values():
        assert eps == pytest.approx(expected, rel=0.01)
    # The committed weights are the result, content-addressed.
    assert result.last_round == 2
    assert run.weights_checksum is not None
    stored = fed.weights.get(run.weights_checksum)
    for name, value in result.arrays.items():
        np.testing.assert_array_equal(stored[name], value)


def test_tenant_without_consent_is_skipped_and_never_sampled(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    with transaction(fed.engine) as session:
        org = uuid.UUID(fed.tenants[1].organization_id)
        for user in session.scalars(select(User).where(User.organization_id == org)):
            withdraw(session, org, user.id, "federated_learning")
    fed.run(fed.config())
    statuses = outcomes(fed)
    assert statuses[(1, "tenant-1")] == "rejected_consent"
    assert statuses[(2, "tenant-1")] == "rejected_consent"
    assert statuses[(1, "tenant-0")] == "accepted"
    trained_nodes = {
        m.metadata.dst_node_id for m in fed.grid.sent if m.metadata.message_type.startswith("train")
    }
    assert fed.node_of(1) not in trained_nodes


def _with_arrays(reply: Message, change) -> Message:  # type: ignore[no-untyped-def]
    arrays = {name: np.array(a.numpy(), copy=True) for name, a in reply.content[protocol.ARRAYS].items()}
    reply.content[protocol.ARRAYS] = record_from_arrays(change(arrays))
    return reply


def _nan(arrays):  # type: ignore[no-untyped-def]
    first = next(iter(arrays))
    arrays[first].flat[0] = np.nan
    return arrays


def _inf(arrays):  # type: ignore[no-untyped-def]
    first = next(iter(arrays))
    arrays[first].flat[0] = np.inf
    return arrays


def _shape(arrays):  # type: ignore[no-untyped-def]
    first = next(iter(arrays))
    arrays[first] = np.zeros((2, 2), dtype=arrays[first].dtype)
    return arrays


def _huge(arrays):  # type: ignore[no-untyped-def]
    return {name: a * 1e6 for name, a in arrays.items()}


def _other_org(reply: Message) -> Message:
    reply.content[protocol.REPORT]["organization_id"] = str(uuid.uuid4())
    return reply


TAMPERS = {
    "nan": lambda msg, reply: _with_arrays(reply, _nan),
    "inf": lambda msg, reply: _with_arrays(reply, _inf),
    "wrong shape": lambda msg, reply: _with_arrays(reply, _shape),
    "norm too large": lambda msg, reply: _with_arrays(reply, _huge),
    "another organization": lambda msg, reply: _other_org(reply),
}


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_bad_update_is_rejected_with_status_and_audit_while_the_round_continues(
    make_federation, kind: str
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: tenant-2's node misbehaves.
    fed = make_federation()
    fed.grid.tamper[fed.node_of(2)] = TAMPERS[kind]
    config = fed.config(rounds=1, max_update_norm=1000.0)

    # Execute
    fed.run(config)

    # Assert
    statuses = outcomes(fed)
    assert statuses[(1, "tenant-2")] == "rejected_invalid"
    assert statuses[(1, "tenant-0")] == statuses[(1, "tenant-1")] == "accepted"
    org = uuid.UUID(fed.tenants[2].organization_id)
    with transaction(fed.engine) as session:
        actions = set(
            session.scalars(select(ImmutableAuditLog.action).where(ImmutableAuditLog.organization_id == org))
        )
        assert "fl.contribution_rejected_invalid" in actions
        assert all(report.ok for report in audit.verify(session))
        run = session.scalar(select(FlRun))
        assert run is not None and run.last_completed_round == 1


def test_replayed_update_is_rejected(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    captured: dict[str, Message] = {}

    def replay(msg: Message, reply: Message) -> Message:
        if "first" not in captured:
            captured["first"] = reply
            return reply
        old = captured["first"]
        reply.content[protocol.ARRAYS] = old.content[protocol.ARRAYS]
        reply.content[protocol.REPORT]["update_checksum"] = old.content[protocol.REPORT]["update_checksum"]
        return reply

    fed.grid.tamper[fed.node_of(0)] = replay
    fed.run(fed.config())
    statuses = outcomes(fed)
    assert statuses[(1, "tenant-0")] == "accepted"
    assert statuses[(2, "tenant-0")] == "rejected_invalid"
    with transaction(fed.engine) as session:
        reason = session.scalar(
            select(FlRoundOutcome.reason).where(
                FlRoundOutcome.aggregation_round == 2, FlRoundOutcome.tenant == "tenant-0"
            )
        )
    assert reason is not None and "replay" in reason


def test_withdrawal_during_a_round_rejects_that_contribution(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    org = uuid.UUID(fed.tenants[0].organization_id)

    def withdraw_mid_round(msg: Message, reply: Message) -> Message:
        with transaction(fed.engine) as session:
            user = session.scalars(select(User).where(User.organization_id == org)).first()
            assert user is not None
            withdraw(session, org, user.id, "ai_training")
        return reply

    fed.grid.tamper[fed.node_of(0)] = withdraw_mid_round
    fed.run(fed.config(rounds=1))
    statuses = outcomes(fed)
    assert statuses[(1, "tenant-0")] == "rejected_consent_changed"
    assert statuses[(1, "tenant-1")] == "accepted"
    # Privacy spent by the update that left the tenant is still charged.
    with transaction(fed.engine) as session:
        charged = session.scalar(
            select(func.count())
            .select_from(PrivacyLedgerEvent)
            .where(PrivacyLedgerEvent.organization_id == org)
        )
    assert charged == 1


def test_node_dying_mid_round_is_failed_and_the_round_proceeds(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    fed.grid.down.add(fed.node_of(1))
    fed.run(fed.config(rounds=1, round_timeout_s=0.5))
    statuses = outcomes(fed)
    assert statuses[(1, "tenant-1")] == "failed"
    assert statuses[(1, "tenant-0")] == statuses[(1, "tenant-2")] == "accepted"
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None and run.last_completed_round == 1


def test_budget_cap_skips_a_tenant_once_exhausted(make_federation) -> None:  # type: ignore[no-untyped-def]
    one_round = independent_epsilon([(1.1, 0.1, 10)], 1e-5)
    fed = make_federation(caps={0: one_round * 1.2})
    fed.run(fed.config(rounds=3))
    statuses = outcomes(fed)
    assert statuses[(1, "tenant-0")] == "accepted"
    assert statuses[(2, "tenant-0")] == "rejected_budget"
    assert statuses[(3, "tenant-0")] == "rejected_budget"
    with transaction(fed.engine) as session:
        eps = session.scalars(
            select(FlRoundOutcome.epsilon_after).where(
                FlRoundOutcome.tenant == "tenant-0", FlRoundOutcome.epsilon_after.is_not(None)
            )
        ).all()
    assert max(eps) <= one_round * 1.2


def test_killed_server_resumes_at_the_next_round_charging_nothing_twice(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the server dies right after committing round 1.
    fed = make_federation()
    config = fed.config(rounds=3)

    def crash(record) -> None:  # type: ignore[no-untyped-def]
        if record.server_round == 1:
            raise KeyboardInterrupt("server killed")

    with pytest.raises(KeyboardInterrupt):
        fed.run(config, on_round=crash)
    with transaction(fed.engine) as session:
        run = session.scalar(select(FlRun))
        assert run is not None and run.last_completed_round == 1
        weights_after_round_1 = run.weights_checksum

    # Execute: a new server process with the same run config.
    sent_before = len(fed.grid.sent)
    result = fed.run(config)

    # Assert: rounds 2 and 3 only, starting from round 1's weights; one DP event per tenant per round.
    rounds_sent = {
        m.content[protocol.INSTRUCTION]["server_round"]
        for m in fed.grid.sent[sent_before:]
        if m.metadata.message_type.startswith("train")
    }
    assert rounds_sent == {2, 3}
    assert [r.server_round for r in result.rounds] == [2, 3]
    with transaction(fed.engine) as session:
        assert session.scalar(select(func.count()).select_from(PrivacyLedgerEvent)) == 9
        first_instruction = next(
            m for m in fed.grid.sent[sent_before:] if m.metadata.message_type.startswith("train")
        )
        from aggregation.checksum import update_checksum

        sent_weights = {n: a.numpy() for n, a in first_instruction.content[protocol.ARRAYS].items()}
        stored = fed.weights.get(weights_after_round_1 or "")
        assert update_checksum(sent_weights) == update_checksum(stored, names=list(sent_weights))
    statuses = outcomes(fed)
    assert {statuses[(r, f"tenant-{i}")] for r in (2, 3) for i in range(3)} == {"accepted"}

    # A completed run is not started again.
    with pytest.raises(ConflictError):
        fed.run(config)


def test_central_dp_adds_noise_and_charges_every_admitted_tenant(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    config = fed.config(rounds=1, dp="both", central_noise_multiplier=5.0, central_clip_norm=0.5)
    fed.run(config)
    with transaction(fed.engine) as session:
        mechanisms = list(session.scalars(select(PrivacyLedgerEvent.mechanism)))
    assert sorted(mechanisms) == ["central_gaussian"] * 3 + ["dp_sgd"] * 3


def test_round_where_every_tenant_is_over_budget_skips_everyone_without_waiting(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    # Central noise this low costs far more than the default cap: nobody may take part.
    fed.run(fed.config(rounds=1, dp="both", central_noise_multiplier=0.1))
    statuses = outcomes(fed)
    assert {statuses[(1, f"tenant-{i}")] for i in range(3)} == {"rejected_budget"}
    with transaction(fed.engine) as session:
        assert session.scalar(select(func.count()).select_from(PrivacyLedgerEvent)) == 0


def test_report_accounts_for_every_round_and_matches_an_independent_accountant(make_federation) -> None:  # type: ignore[no-untyped-def]
    from fl_server.report import build_report
    from privacy.ledger import LedgerPolicy

    fed = make_federation()
    with transaction(fed.engine) as session:
        org = uuid.UUID(fed.tenants[2].organization_id)
        for user in session.scalars(select(User).where(User.organization_id == org)):
            withdraw(session, org, user.id, "vamn_contribution")
    fed.run(fed.config(rounds=2))
    report = build_report(fed.engine, "test-run", fed.weights.root, LedgerPolicy(default_delta=1e-5))
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    first = report["rounds"][0]
    assert first["participants"] == ["tenant-0", "tenant-1"]
    assert first["skipped"] == {"tenant-2": "rejected_consent"}
    assert first["statuses"] == {"accepted": 2, "rejected_consent": 1}
    assert report["rounds"][1]["epsilon"]["tenant-0"] > first["epsilon"]["tenant-0"] > 0
    assert report["rounds"][1]["epsilon"]["tenant-2"] == 0.0
    for name in ("tenant-0", "tenant-1"):
        tenant = report["tenants"][name]
        events = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in tenant["dp_events"]]
        assert len(events) == 2
        assert tenant["epsilon_spent"] == pytest.approx(independent_epsilon(events, 1e-5), rel=0.01)
        assert tenant["epsilon_spent"] <= tenant["epsilon_cap"]
    assert report["config"]["delta"] == 1e-5
    assert report["final"]["weights_checksum"]
