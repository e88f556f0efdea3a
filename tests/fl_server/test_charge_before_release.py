"""Charge before release, what was instructed (issue 11): the server's side of the privacy contract.

The real ClientApp on the in-process grid, on both backends. Every reply a node produces is a
release; the ledger must hold at least the instructed event for each, whatever happens next.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter

import dp_accounting
import numpy as np
import pytest
from flwr.app import Error, Message, RecordDict
from sqlalchemy import select

from fl_client import protocol
from fl_server.governance import FAILED
from fl_server.strategy import RoundRecord
from privacy import ledger
from schema.db import transaction
from schema.models import FederatedLearningContribution, FlRoundOutcome, PrivacyLedgerEvent
from tests.fl_server.conftest import Federation


def events_of(fed: Federation, tenant: int) -> list[PrivacyLedgerEvent]:
    org = uuid.UUID(fed.tenants[tenant].organization_id)
    with transaction(fed.engine) as session:
        return list(
            session.scalars(
                select(PrivacyLedgerEvent)
                .where(PrivacyLedgerEvent.organization_id == org)
                .order_by(PrivacyLedgerEvent.id)
            )
        )


def statuses(fed: Federation) -> dict[tuple[int, str], str]:
    with transaction(fed.engine) as session:
        return {(r.aggregation_round, r.tenant): r.status for r in session.scalars(select(FlRoundOutcome))}


def train_messages(fed: Federation) -> list[Message]:
    return [m for m in fed.grid.sent if m.metadata.message_type.startswith("train")]


def instruction_of(message: Message) -> dict[str, object]:
    return dict(message.content[protocol.INSTRUCTION].items())


def rdp_epsilon(events: list[tuple[float, float, int]], delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    for z, q, steps in events:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return float(accountant.get_epsilon(delta))


# --- seeds -----------------------------------------------------------------------------------


def test_server_sends_no_seed_in_dp_runs_and_one_only_in_non_private_runs(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    fed = make_federation(tenants=2)

    # Execute: a seeded DP run, then a seeded dp=off run.
    fed.run(fed.config(rounds=1, seed=7))
    dp_seeds = [instruction_of(m)["seed"] for m in train_messages(fed)]
    sent = len(fed.grid.sent)
    fed.run(fed.config(run_name="off", rounds=1, seed=7, dp="off"))
    off_seeds = [instruction_of(m)["seed"] for m in train_messages(fed)[len(dp_seeds) :]]

    # Assert
    assert dp_seeds == [0, 0]
    assert len(off_seeds) == 2 and all(seed != 0 for seed in off_seeds)
    assert len(fed.grid.sent) > sent


# --- charged at dispatch, whatever the reply ---------------------------------------------------


def _malformed(msg: Message, reply: Message) -> Message:
    return Message(RecordDict({protocol.REPORT: reply.content[protocol.ARRAYS]}), reply_to=msg)


def _node_error(msg: Message, reply: Message) -> Message:
    return Message(Error(code=7, reason="node crashed while training"), reply_to=msg)


def _less_private(msg: Message, reply: Message) -> Message:
    reply.content[protocol.REPORT]["noise_multiplier"] = 0.5
    return reply


REPLIES = {
    "malformed": (_malformed, FAILED),
    "node error": (_node_error, FAILED),
    "less private than instructed": (_less_private, "rejected_invalid"),
}


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_a_bad_reply_is_still_charged_the_instructed_event(make_federation, kind: str) -> None:  # type: ignore[no-untyped-def]
    # Prepare: tenant-1's reply goes wrong after it trained.
    fed = make_federation()
    tamper, expected = REPLIES[kind]
    fed.grid.tamper[fed.node_of(1)] = tamper

    # Execute
    fed.run(fed.config(rounds=1))

    # Assert: rejected or failed, and the ledger holds exactly what the server instructed.
    assert statuses(fed)[(1, "tenant-1")] == expected
    charged = events_of(fed, 1)
    assert [(e.mechanism, e.unit, e.noise_multiplier, e.sample_rate, e.steps) for e in charged] == [
        ("dp_sgd", "record", 1.1, 0.1, 10)
    ]
    with transaction(fed.engine) as session:
        contribution = session.get(FederatedLearningContribution, charged[0].contribution_id)
        assert contribution is not None and contribution.status == expected


def test_a_timed_out_node_is_charged(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation()
    fed.grid.down.add(fed.node_of(2))
    fed.run(fed.config(rounds=1, round_timeout_s=0.3))
    assert statuses(fed)[(1, "tenant-2")] == FAILED
    assert len(events_of(fed, 2)) == 1


def test_a_node_refusing_on_its_own_budget_stays_charged(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: tenant-0's node guards a tiny cap of its own.
    fed = make_federation()
    fed.grid.contexts[fed.node_of(0)].node_config[protocol.NODE_EPSILON_CAP] = 0.01

    # Execute
    fed.run(fed.config(rounds=1))

    # Assert: over-charged (the node released nothing), never under-charged.
    assert statuses(fed)[(1, "tenant-0")] == "rejected_budget"
    assert len(events_of(fed, 0)) == 1


def test_a_tenant_over_its_cap_is_never_instructed(make_federation) -> None:  # type: ignore[no-untyped-def]
    one_round = rdp_epsilon([(1.1, 0.1, 10)], 1e-5)
    fed = make_federation(caps={0: one_round * 1.2})
    fed.run(fed.config(rounds=2))
    instructed = Counter(instruction_of(m)["organization_id"] for m in train_messages(fed))
    assert instructed[fed.tenants[0].organization_id] == 1
    assert statuses(fed)[(2, "tenant-0")] == "rejected_budget"
    assert len(events_of(fed, 0)) == 1


def test_crash_after_dispatch_then_resume_charges_every_release_at_least_once(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the server dies while round 2's replies come in (after its dispatch committed).
    fed = make_federation()
    config = fed.config(rounds=3)
    replies: Counter[str] = Counter()

    def count(msg: Message, reply: Message) -> Message:
        replies[instruction_of(msg)["organization_id"]] += 1  # type: ignore[index]
        return reply

    def crash(msg: Message, reply: Message) -> Message:
        count(msg, reply)
        if instruction_of(msg)["server_round"] == 2:
            raise KeyboardInterrupt("server killed mid-round")
        return reply

    for index in range(3):
        fed.grid.tamper[fed.node_of(index)] = count
    fed.grid.tamper[fed.node_of(1)] = crash
    with pytest.raises(KeyboardInterrupt):
        fed.run(config)

    # Execute: a new server resumes; the crashed round is run again.
    fed.grid.tamper[fed.node_of(1)] = count
    fed.run(config)

    # Assert: one charge per dispatch, at least one per release, never fewer.
    for index in range(3):
        org = fed.tenants[index].organization_id
        assert len(events_of(fed, index)) >= replies[org] >= 3
    # The interrupted attempt's rows are aborted (charges kept); round 2 counts attempt 2 only:
    # one accepted contribution per tenant, weights summing to 1.
    with transaction(fed.engine) as session:
        round_2 = session.scalars(select(FlRoundOutcome).where(FlRoundOutcome.aggregation_round == 2)).all()
        stale = [o for o in round_2 if o.attempt == 1]
        current = [o for o in round_2 if o.attempt == 2]
        weights = [
            float(session.get(FederatedLearningContribution, o.contribution_id).contribution_weight)  # type: ignore[union-attr]
            for o in current
        ]
        aborted_contributions = [
            session.get(FederatedLearningContribution, o.contribution_id).status  # type: ignore[union-attr]
            for o in stale
        ]
    assert stale and all(o.status == "aborted" and "interrupted" in (o.reason or "") for o in stale)
    assert set(aborted_contributions) == {"aborted"}
    assert sorted(o.tenant for o in current) == ["tenant-0", "tenant-1", "tenant-2"]
    assert {o.status for o in current} == {"accepted"}
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)


# --- non-private mode --------------------------------------------------------------------------


def test_non_private_run_is_charged_infinite_epsilon_and_later_dp_is_refused(make_federation) -> None:  # type: ignore[no-untyped-def]
    from fl_server.report import build_report

    # Prepare
    fed = make_federation(tenants=2)

    # Execute: dp=off, then a DP run on the same tenants.
    fed.run(fed.config(run_name="plain", rounds=1, dp="off"))
    fed.run(fed.config(run_name="private", rounds=1))

    # Assert: infinite in every unit, reported as "inf", and the DP run may not use the tenants.
    with transaction(fed.engine) as session:
        rows = ledger.budget_rows(session, fed.tenants[0].organization_id, policy=fed_policy(fed))
    assert {r.unit for r in rows} == {"record", "user", "tenant"}
    assert all(math.isinf(r.epsilon_spent) and r.status == "exhausted" for r in rows)
    assert {m.mechanism for m in events_of(fed, 0)} == {"non_private"}
    assert statuses(fed)[(1, "tenant-0")] == "rejected_budget"  # the private run's round 1
    report = build_report(fed.engine, "plain", fed.weights.root, fed_policy(fed))
    assert report["tenants"]["tenant-0"]["epsilon_spent"] == "inf"
    assert report["rounds"][0]["epsilon"]["tenant-0"] == "inf"


def fed_policy(fed: Federation) -> ledger.LedgerPolicy:
    return ledger.LedgerPolicy.from_settings(fed.settings)


# --- delta belongs to the budget ---------------------------------------------------------------


def test_run_delta_larger_than_a_budget_delta_sits_that_tenant_out(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Prepare: tenant-0's budget is at delta 1e-7; the run asks 1e-6 (the platform default is 1e-5).
    fed = make_federation()
    with transaction(fed.engine) as session:
        ledger.set_budget(
            session, fed.tenants[0].organization_id, "digits", 8.0, 1e-7, policy=fed_policy(fed)
        )

    # Execute
    fed.run(fed.config(rounds=1, delta=1e-6))

    # Assert
    with transaction(fed.engine) as session:
        reason = session.scalar(select(FlRoundOutcome.reason).where(FlRoundOutcome.tenant == "tenant-0"))
    assert statuses(fed)[(1, "tenant-0")] == "rejected_budget"
    assert reason is not None and "delta" in reason
    assert statuses(fed)[(1, "tenant-1")] == "accepted"
    assert events_of(fed, 0) == []


def test_a_run_delta_never_becomes_the_ledger_delta(make_federation) -> None:  # type: ignore[no-untyped-def]
    # delta 0.5 once let five charges through a cap of 8 (epsilon at 1e-5 was 18): now nobody takes part.
    fed = make_federation(tenants=2)
    fed.run(fed.config(rounds=1, delta=0.5))
    assert {statuses(fed)[(1, f"tenant-{i}")] for i in range(2)} == {"rejected_budget"}
    assert events_of(fed, 0) == []


def test_instruction_carries_the_budget_cap_and_delta(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation(tenants=1)
    with transaction(fed.engine) as session:
        ledger.set_budget(
            session, fed.tenants[0].organization_id, "digits", 6.0, 1e-6, policy=fed_policy(fed)
        )
    fed.run(fed.config(rounds=1, delta=1e-6))
    instruction = instruction_of(train_messages(fed)[0])
    assert (instruction["epsilon_cap"], instruction["delta"], instruction["unit"]) == (6.0, 1e-6, "record")


# --- central DP --------------------------------------------------------------------------------


def test_central_dp_noises_every_round_over_a_fixed_denominator_even_below_min_accepted(
    make_federation,
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: two of three tenants send garbage, one update is accepted, three are needed.
    fed = make_federation()
    for index in (0, 1):
        fed.grid.tamper[fed.node_of(index)] = _node_error
    records: list[RoundRecord] = []
    config = fed.config(
        rounds=1, dp="central", min_accepted=3, central_noise_multiplier=5.0, central_clip_norm=0.5
    )
    from fl_client.tasks import get_task

    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(config.seed).items()}

    # Execute
    result = fed.run(config, on_round=records.append)

    # Assert: the model moved (noise of std z*C / denominator), the denominator is fraction x admitted.
    assert records[0].central_denominator == pytest.approx(1.0 * 3)
    assert records[0].central_population == 3
    moved = max(float(np.max(np.abs(result.arrays[n] - initial[n]))) for n in initial)
    assert moved > 0.05  # std 5 * 0.5 / 3 per coordinate: an un-noised "unchanged" model moves 0
    with transaction(fed.engine) as session:
        units = Counter(session.scalars(select(PrivacyLedgerEvent.unit)))
    assert units == {"tenant": 3}


def test_central_dp_charges_every_admitted_tenant_whether_sampled_or_not(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation(tenants=4)
    records: list[RoundRecord] = []
    fed.run(
        fed.config(rounds=3, dp="central", fraction=0.5, central_noise_multiplier=5.0),
        on_round=records.append,
    )
    with transaction(fed.engine) as session:
        rows = session.execute(
            select(
                PrivacyLedgerEvent.aggregation_round, PrivacyLedgerEvent.sample_rate, PrivacyLedgerEvent.unit
            )
        ).all()
    assert Counter(r[0] for r in rows) == {1: 4, 2: 4, 3: 4}
    assert {(r[1], r[2]) for r in rows} == {(0.5, "tenant")}
    assert [r.central_denominator for r in records] == [2.0, 2.0, 2.0]


def test_poisson_tenant_sampling_includes_each_tenant_independently(make_federation) -> None:  # type: ignore[no-untyped-def]
    # Flower's fixed-size sampling always picks max(int(N f), 1); Poisson sizes are Binomial(N, f).
    from fl_server.governance import Tenant

    fed = make_federation(tenants=1)
    strategy = fed.strategy(fed.config(dp="central", fraction=0.3))
    admitted = {n: Tenant(n, uuid.uuid4(), f"t{n}") for n in range(10)}
    sizes = [len(strategy._poisson_sample(admitted)) for _ in range(2000)]
    hits = Counter(n for _ in range(2000) for n in strategy._poisson_sample(admitted))
    mean = sum(sizes) / len(sizes)
    assert abs(mean - 3.0) < 5 * math.sqrt(10 * 0.3 * 0.7 / 2000)
    assert len(set(sizes)) >= 4 and 0 in sizes
    assert all(abs(hits[n] / 2000 - 0.3) < 0.06 for n in range(10))


def test_units_never_mix_in_one_epsilon(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation(tenants=2)
    fed.run(fed.config(rounds=2, dp="both", unit="user", central_noise_multiplier=5.0))
    with transaction(fed.engine) as session:
        rows = {
            r.unit: r
            for r in ledger.budget_rows(session, fed.tenants[0].organization_id, policy=fed_policy(fed))
        }
        user_events = ledger.history(
            session, fed.tenants[0].organization_id, "digits", policy=fed_policy(fed), unit="user"
        )
    assert set(rows) == {"user", "tenant"}
    assert rows["user"].events == rows["tenant"].events == 2
    assert {e.mechanism for e in user_events} == {"dp_sgd"}
    assert rows["user"].epsilon_spent == pytest.approx(rdp_epsilon([(1.1, 0.1, 10)] * 2, 1e-5), rel=0.01)
    assert rows["tenant"].epsilon_spent == pytest.approx(rdp_epsilon([(5.0, 1.0, 1)] * 2, 1e-5), rel=0.01)


# --- one organization, one node ----------------------------------------------------------------


def test_second_node_for_an_organization_and_unknown_organizations_are_skipped(make_federation) -> None:  # type: ignore[no-untyped-def]
    from flwr.app import Context

    # Prepare: node 2000 claims tenant-0's organization, 2001 an unknown one, 2002 an invalid id.
    fed = make_federation(tenants=2)
    base = dict(fed.grid.contexts[fed.node_of(0)].node_config)
    claims = {2000: base[protocol.NODE_ORGANIZATION], 2001: str(uuid.uuid4()), 2002: "not-a-uuid"}
    for node_id, org in claims.items():
        config = base | {protocol.NODE_ORGANIZATION: org, protocol.NODE_TENANT: f"impostor-{node_id}"}
        fed.grid.contexts[node_id] = Context(
            run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={}
        )

    # Execute
    strategy = fed.strategy(fed.config(rounds=1))
    from aggregation.flwr_adapter import record_from_arrays
    from fl_client.tasks import get_task

    initial = {k: v.numpy() for k, v in get_task("digits").initial_state(3).items()}
    result = strategy.start(fed.grid, record_from_arrays(initial))

    # Assert: the run completed with the two genuine nodes; the others were skipped with reasons.
    assert result.last_round == 1
    # Whichever of the two nodes naming tenant-0's organization identified second is skipped.
    twins = {fed.node_of(0), 2000}
    skipped_twin = set(strategy.skipped_nodes) & twins
    assert len(skipped_twin) == 1 and set(strategy.skipped_nodes) == skipped_twin | {2001, 2002}
    assert "already speaks for" in strategy.skipped_nodes[skipped_twin.pop()]
    assert "does not exist" in strategy.skipped_nodes[2001]
    assert "invalid" in strategy.skipped_nodes[2002]
    trained = [m.metadata.dst_node_id for m in train_messages(fed)]
    assert len(trained) == 2 and fed.node_of(1) in trained and len(set(trained) & twins) == 1


# --- evaluation ---------------------------------------------------------------------------------


def test_evaluate_round_sends_the_snapshot_and_keeps_dp_metrics_on_the_nodes(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation(tenants=2)
    result = fed.run(fed.config(rounds=1, holdout_fraction=0.25))
    evaluations = [m for m in fed.grid.sent if m.metadata.message_type.startswith("evaluate")]
    assert len(evaluations) == 2
    by_org = {instruction_of(m)["organization_id"]: instruction_of(m) for m in train_messages(fed)}
    for message in evaluations:
        record = protocol.EvalInstruction.from_record(message.content[protocol.INSTRUCTION])
        assert record.dp is True and record.holdout_fraction == 0.25 and record.server_round == 1
        assert list(record.user_ids) == list(by_org[record.organization_id]["user_ids"])  # type: ignore[call-overload]
    assert result.rounds[0].metric is None
