"""The tenant node's ClientApp: what it releases, which users it trains and evaluates on, its own ledger.

The app is called the way Flower calls it (``app(message, context)``), with a CSV data source of
synthetic digits owned by 20 users.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from aggregation.flwr_adapter import record_from_arrays
from fl_client import node_ledger, protocol
from fl_client.app import LEDGER_KEY, kept_evaluations, make_client_app, resolve_node
from fl_client.holdout import split_users
from fl_client.protocol import EvalInstruction, TrainInstruction, TrainReport
from fl_client.tasks import get_task
from fl_client.tasks.data_sources import write_csv
from privacy import accounting
from privacy.events import DpSgdEvent
from tests.fl_client.conftest import firm_records

ORG = str(uuid.UUID(int=42))
USERS = [str(uuid.UUID(int=1000 + i)) for i in range(20)]
HOLDOUT = 0.25


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    # Flower's runtimes set the process's task identity; messages are stamped with it.
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 1
    logging.getLogger("absl").setLevel(logging.ERROR)


@pytest.fixture
def records() -> list[dict[str, Any]]:
    rows = firm_records("digits", n=300)
    for i, row in enumerate(rows):
        row["user_id"] = USERS[i % len(USERS)]
    return rows


@pytest.fixture
def data_path(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    path = tmp_path / "digits.csv"
    write_csv(path, records)
    return path


@pytest.fixture
def app() -> Iterator[ClientApp]:
    yield make_client_app()


def _context(data_path: Path, **extra: Any) -> Context:
    config = {
        protocol.NODE_ORGANIZATION: ORG,
        protocol.NODE_TENANT: "firm",
        "data-source": "csv",
        "data-path": str(data_path),
        **{k: v for k, v in extra.items()},
    }
    return Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={})


def _instruction(**overrides: Any) -> TrainInstruction:
    values: dict[str, Any] = {
        "run_id": "run-1",
        "server_round": 1,
        "task": "digits",
        "organization_id": ORG,
        "consent_digest": "digest",
        "user_ids": tuple(USERS),
        "dp": True,
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "sample_rate": 0.1,
        "steps": 3,
        "lr": 0.5,
        "seed": 7,
        "unit": "record",
        "expected_batch_size": 20.0,
        "epsilon_cap": 100.0,
        "delta": 1e-5,
        "holdout_fraction": HOLDOUT,
    }
    return TrainInstruction(**(values | overrides))


def _weights(task: str = "digits") -> Any:
    return record_from_arrays({k: v.numpy() for k, v in get_task(task).initial_state(0).items()})


def _send_train(
    app: ClientApp, context: Context, instruction: TrainInstruction, task: str = "digits"
) -> Message:
    content = RecordDict({protocol.ARRAYS: _weights(task), protocol.INSTRUCTION: instruction.to_record()})
    return app(Message(content=content, dst_node_id=1, message_type="train"), context)


def _send_evaluate(app: ClientApp, context: Context, instruction: EvalInstruction) -> Message:
    content = RecordDict({protocol.ARRAYS: _weights(), protocol.INSTRUCTION: instruction.to_record()})
    return app(Message(content=content, dst_node_id=1, message_type="evaluate"), context)


def _eval_instruction(**overrides: Any) -> EvalInstruction:
    values: dict[str, Any] = {
        "run_id": "run-1",
        "server_round": 1,
        "task": "digits",
        "organization_id": ORG,
        "user_ids": tuple(USERS),
        "dp": False,
        "holdout_fraction": HOLDOUT,
    }
    return EvalInstruction(**(values | overrides))


def _report(reply: Message) -> TrainReport:
    return TrainReport.from_record(protocol.config_of(reply.content, protocol.REPORT))


def _count(records: list[dict[str, Any]], users: set[str]) -> int:
    return sum(1 for r in records if r["user_id"] in users)


def _ledger_rows(context: Context, task: str = "digits", unit: str = "record") -> list[dict[str, Any]]:
    record = protocol.config_of(context.state, LEDGER_KEY) if LEDGER_KEY in context.state else {}
    return list(json.loads(str(record[f"{task}/{unit}"]))) if f"{task}/{unit}" in record else []


def _reference_epsilon(events: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RdpAccountant()
    for z, q, steps in events:
        accountant.compose(
            dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)
        )
    return float(accountant.get_epsilon(delta))


# --- what a DP node releases ---------------------------------------------------------------------


def test_dp_training_reply_releases_no_record_count(app: ClientApp, data_path: Path) -> None:
    # Prepare
    context = _context(data_path)

    # Execute
    reply = _send_train(app, context, _instruction())

    # Assert
    report = _report(reply)
    metrics = protocol.metrics_of(reply.content)
    assert report.trained and report.refusal == ""
    assert report.num_examples == 0
    assert dict(metrics) == {protocol.NUM_EXAMPLES: 0}
    assert report.unit == "record"
    assert report.update_checksum != ""


def test_dp_node_ignores_the_instructed_seed(app: ClientApp, data_path: Path) -> None:
    # Prepare
    context = _context(data_path)

    # Execute
    first = _send_train(app, context, _instruction(server_round=1))
    second = _send_train(app, context, _instruction(server_round=2))

    # Assert: the same weights, data and seed; a seeded node would send identical updates.
    assert _report(first).update_checksum != _report(second).update_checksum


def test_non_private_training_uses_only_consented_users_that_are_not_held_out(
    app: ClientApp, data_path: Path, records: list[dict[str, Any]]
) -> None:
    # Prepare: the snapshot has half the users; some of them are held out.
    snapshot = USERS[:10]
    training, held_out = split_users(ORG, snapshot, HOLDOUT)
    context = _context(data_path)

    # Execute
    reply = _send_train(app, context, _instruction(dp=False, user_ids=tuple(snapshot)))

    # Assert: the exact count (fine without DP) is that of the training users' records only.
    assert held_out and training
    assert _report(reply).num_examples == _count(records, set(training))
    assert protocol.metrics_of(reply.content)[protocol.NUM_EXAMPLES] == _count(records, set(training))
    assert _report(reply).unit == ""


def test_non_private_runs_are_reproducible_with_the_instructed_seed(app: ClientApp, data_path: Path) -> None:
    # Prepare
    context = _context(data_path)

    # Execute
    first = _send_train(app, context, _instruction(dp=False))
    again = _send_train(app, context, _instruction(dp=False))

    # Assert
    assert _report(first).update_checksum == _report(again).update_checksum


# --- held-out evaluation -----------------------------------------------------------------------


def test_evaluation_uses_only_held_out_consented_users(
    app: ClientApp, tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    # Prepare: a user outside the snapshot owns records too; the snapshot has 15 of 20 users.
    outsider = str(uuid.uuid4())
    path = tmp_path / "with-outsider.csv"
    write_csv(path, [*records, *({**r, "user_id": outsider} for r in records[:40])])
    snapshot = USERS[:15]
    _, held_out = split_users(ORG, snapshot, HOLDOUT)
    context = _context(path)

    # Execute
    reply = _send_evaluate(app, context, _eval_instruction(user_ids=tuple(snapshot)))

    # Assert
    metrics = protocol.metrics_of(reply.content)
    assert held_out
    assert metrics[protocol.NUM_EXAMPLES] == _count(records, set(held_out))
    assert "accuracy" in metrics


def test_holdout_key_in_node_config_changes_which_users_are_held_out(
    app: ClientApp, data_path: Path, records: list[dict[str, Any]]
) -> None:
    # Prepare
    key = "a node secret"
    _, by_org = split_users(ORG, USERS, HOLDOUT)
    _, by_key = split_users(key, USERS, HOLDOUT)
    context = _context(data_path, **{protocol.NODE_HOLDOUT_KEY: key})

    # Execute
    reply = _send_evaluate(app, context, _eval_instruction())

    # Assert
    assert set(by_org) != set(by_key)
    assert protocol.metrics_of(reply.content)[protocol.NUM_EXAMPLES] == _count(records, set(by_key))


def test_dp_evaluation_releases_no_metric_and_no_count_and_keeps_it_on_the_node(
    app: ClientApp, data_path: Path, tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    # Prepare
    state_dir = tmp_path / "state"
    context = _context(data_path, **{protocol.NODE_STATE_DIR: str(state_dir)})
    _, held_out = split_users(ORG, USERS, HOLDOUT)

    # Execute
    reply = _send_evaluate(app, context, _eval_instruction(dp=True, server_round=3))

    # Assert
    assert dict(protocol.metrics_of(reply.content)) == {protocol.NUM_EXAMPLES: 0}
    kept = kept_evaluations(context, resolve_node(context), "digits")
    assert len(kept) == 1
    assert kept[0]["num_examples"] == _count(records, set(held_out)) > 0
    assert kept[0]["run_id"] == "run-1" and kept[0]["server_round"] == 3 and kept[0]["metric"] == "accuracy"
    assert 0.0 <= kept[0]["value"] <= 1.0 and kept[0]["time"]
    on_disk = json.loads(node_ledger.evaluations_path(state_dir, ORG, "digits").read_text())
    assert on_disk["rows"][0]["num_examples"] == kept[0]["num_examples"]


def test_evaluate_without_the_eval_instruction_fields_is_refused(app: ClientApp, data_path: Path) -> None:
    # Prepare: the old message carried only task, organization and round, and evaluated every record.
    context = _context(data_path)
    old = {"task": "digits", "organization_id": ORG, "server_round": 1}
    content = RecordDict({protocol.ARRAYS: _weights(), protocol.INSTRUCTION: protocol.ConfigRecord(old)})

    # Execute / Assert
    with pytest.raises(ValueError, match="missing"):
        app(Message(content=content, dst_node_id=1, message_type="evaluate"), context)


# --- the node's own budget guard -----------------------------------------------------------------


def test_guard_is_on_by_default_with_the_instructions_cap(app: ClientApp, data_path: Path) -> None:
    # Prepare: no node config cap; the instruction's cap is below this one event's epsilon.
    context = _context(data_path)
    one = accounting.epsilon([DpSgdEvent(1.0, 0.1, 3)], 1e-5)
    instruction = _instruction(epsilon_cap=one / 2)

    # Execute
    reply = _send_train(app, context, instruction)

    # Assert: refused, nothing trained, nothing charged.
    report = _report(reply)
    assert not report.trained and "over its cap" in report.refusal
    assert protocol.ARRAYS not in reply.content
    assert _ledger_rows(context) == []


@pytest.mark.parametrize(
    ("instructed_cap", "node_cap", "trains"),
    [(1e9, "0.01", False), (0.01, "1000", True)],
)
def test_node_config_cap_overrides_the_instructions(
    app: ClientApp, data_path: Path, instructed_cap: float, node_cap: str, trains: bool
) -> None:
    # Prepare
    context = _context(data_path, **{protocol.NODE_EPSILON_CAP: node_cap, protocol.NODE_DELTA: "1e-6"})

    # Execute
    reply = _send_train(app, context, _instruction(epsilon_cap=instructed_cap))

    # Assert
    assert _report(reply).trained is trains
    rows = _ledger_rows(context)
    assert len(rows) == (1 if trains else 0)
    if trains:
        assert rows[0]["epsilon_cap"] == 1000.0 and rows[0]["delta"] == 1e-6


def test_guard_refuses_once_the_nodes_own_history_reaches_the_cap(app: ClientApp, data_path: Path) -> None:
    # Prepare: a cap that fits two events but not three.
    two = accounting.epsilon([DpSgdEvent(1.0, 0.1, 3)] * 2, 1e-5)
    three = accounting.epsilon([DpSgdEvent(1.0, 0.1, 3)] * 3, 1e-5)
    cap = (two + three) / 2
    context = _context(data_path)

    # Execute
    replies = [_send_train(app, context, _instruction(server_round=r, epsilon_cap=cap)) for r in (1, 2, 3)]

    # Assert
    assert [_report(r).trained for r in replies] == [True, True, False]
    assert len(_ledger_rows(context)) == 2


def test_ledger_is_written_before_training_so_a_failure_after_it_still_counts(
    app: ClientApp, data_path: Path, tmp_path: Path
) -> None:
    # Prepare: weights of another model type make training fail after the guard let it through.
    state_dir = tmp_path / "state"
    context = _context(data_path, **{protocol.NODE_STATE_DIR: str(state_dir)})

    # Execute
    with pytest.raises(Exception, match="do not fit"):
        _send_train(app, context, _instruction(), task="time_estimation")

    # Assert
    assert len(_ledger_rows(context)) == 1
    on_disk = node_ledger.load_ledger(state_dir, ORG, "digits", "record")
    assert len(on_disk) == 1 and on_disk[0]["run_id"] == "run-1"


def test_ledger_rows_carry_composed_epsilon_run_round_unit_and_time(
    app: ClientApp, data_path: Path, tmp_path: Path
) -> None:
    # Prepare
    state_dir = tmp_path / "state"
    context = _context(data_path, **{protocol.NODE_STATE_DIR: str(state_dir)})

    # Execute: two record-level rounds and one user-level round.
    _send_train(app, context, _instruction(server_round=1))
    _send_train(app, context, _instruction(server_round=2, noise_multiplier=2.0, sample_rate=0.2))
    _send_train(
        app, context, _instruction(server_round=3, unit="user", sample_rate=0.5, expected_batch_size=10.0)
    )

    # Assert: ε is the accountant's over the history (not a sum), per unit, and agrees with dp-accounting.
    record = node_ledger.load_ledger(state_dir, ORG, "digits", "record")
    user = node_ledger.load_ledger(state_dir, ORG, "digits", "user")
    assert [(r["run_id"], r["server_round"], r["unit"]) for r in record] == [
        ("run-1", 1, "record"),
        ("run-1", 2, "record"),
    ]
    assert [(r["server_round"], r["unit"]) for r in user] == [(3, "user")]
    first = _reference_epsilon([(1.0, 0.1, 3)], 1e-5)
    both = _reference_epsilon([(1.0, 0.1, 3), (2.0, 0.2, 3)], 1e-5)
    assert record[0]["epsilon"] == pytest.approx(first, rel=1e-6)
    assert record[1]["epsilon"] == pytest.approx(both, rel=1e-6)
    assert user[0]["epsilon"] == pytest.approx(_reference_epsilon([(1.0, 0.5, 3)], 1e-5), rel=1e-6)
    assert all(r["time"].endswith("+00:00") for r in [*record, *user])


def test_ledger_on_disk_survives_a_restarted_node(app: ClientApp, data_path: Path, tmp_path: Path) -> None:
    # Prepare: a cap that fits one event; the second arrives at a fresh process (empty Context state).
    state_dir = tmp_path / "state"
    one = accounting.epsilon([DpSgdEvent(1.0, 0.1, 3)], 1e-5)
    two = accounting.epsilon([DpSgdEvent(1.0, 0.1, 3)] * 2, 1e-5)
    cap = (one + two) / 2

    # Execute
    first = _send_train(
        app, _context(data_path, **{protocol.NODE_STATE_DIR: str(state_dir)}), _instruction(epsilon_cap=cap)
    )
    second = _send_train(
        make_client_app(),
        _context(data_path, **{protocol.NODE_STATE_DIR: str(state_dir)}),
        _instruction(epsilon_cap=cap),
    )

    # Assert
    assert _report(first).trained and not _report(second).trained


def test_pre_unit_ledger_file_counts_as_record_level_history(
    app: ClientApp, data_path: Path, tmp_path: Path
) -> None:
    # Prepare: the old format (a bare list of events) already spent most of the cap.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    legacy = node_ledger.legacy_ledger_path(state_dir, ORG, "digits")
    legacy.write_text(json.dumps([{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3}]))
    cap = accounting.epsilon([DpSgdEvent(1.0, 0.1, 3)] * 2, 1e-5) * 1.01
    context = _context(data_path, **{protocol.NODE_STATE_DIR: str(state_dir)})

    # Execute
    first = _send_train(app, context, _instruction(epsilon_cap=cap))
    second = _send_train(app, context, _instruction(epsilon_cap=cap, server_round=2))

    # Assert
    assert _report(first).trained and not _report(second).trained
    assert not legacy.exists()
    assert len(node_ledger.load_ledger(state_dir, ORG, "digits", "record")) == 2


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"noise_multiplier": 0.0}, "DP parameters"),
        ({"unit": "tenant"}, "unit"),
        ({"delta": 0.0}, "delta"),
        ({"expected_batch_size": 0.0}, "expected batch size"),
        ({"organization_id": str(uuid.UUID(int=7))}, "another organization"),
    ],
)
def test_guard_refuses_instructions_it_cannot_account_for(
    app: ClientApp, data_path: Path, override: dict[str, Any], reason: str
) -> None:
    # Prepare
    context = _context(data_path)

    # Execute
    reply = _send_train(app, context, _instruction(**override))

    # Assert
    assert not _report(reply).trained and reason in _report(reply).refusal
    assert _ledger_rows(context) == []


def test_non_private_updates_appear_in_the_node_ledger_as_infinite_epsilon(
    app: ClientApp, data_path: Path, tmp_path: Path
) -> None:
    # Prepare
    state_dir = tmp_path / "state"
    context = _context(data_path, **{protocol.NODE_STATE_DIR: str(state_dir)})

    # Execute
    _send_train(app, context, _instruction(dp=False))

    # Assert
    rows = node_ledger.load_ledger(state_dir, ORG, "digits", node_ledger.NON_PRIVATE)
    assert len(rows) == 1 and rows[0]["epsilon"] == float("inf")
    assert node_ledger.load_ledger(state_dir, ORG, "digits", "record") == []


def test_user_level_instruction_trains_and_reports_its_unit(app: ClientApp, data_path: Path) -> None:
    # Prepare
    context = _context(data_path)

    # Execute
    reply = _send_train(app, context, _instruction(unit="user", sample_rate=0.5, expected_batch_size=7.5))

    # Assert
    report = _report(reply)
    assert report.trained and report.unit == "user" and report.num_examples == 0
    assert _ledger_rows(context, unit="user") and not _ledger_rows(context, unit="record")
    arrays = protocol.arrays_of(reply.content)
    assert all(np.isfinite(a.numpy()).all() for a in arrays.values())
