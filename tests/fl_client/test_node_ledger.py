"""The node's own files and `accute-fl node ledger|evaluations`, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_client import node_ledger
from fl_client.holdout import split_users
from orchestrator.cli.main import main

ORG = str(uuid.UUID(int=42))
OTHER = str(uuid.UUID(int=43))


def _row(round_: int, epsilon: float, unit: str = "record") -> dict[str, Any]:
    return {
        "run_id": "run-a",
        "server_round": round_,
        "unit": unit,
        "noise_multiplier": 1.0,
        "sample_rate": 0.1,
        "steps": 3,
        "delta": 1e-5,
        "epsilon": epsilon,
        "epsilon_cap": 8.0,
        "time": "2026-11-29T17:00:00+00:00",
    }


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    node_ledger.save_ledger(path, ORG, "digits", "record", [_row(1, 0.5), _row(2, 0.7)])
    node_ledger.save_ledger(path, ORG, "digits", "user", [_row(1, 0.9, "user")])
    node_ledger.save_ledger(path, OTHER, "time_estimation", "user", [_row(4, 1.5, "user")])
    node_ledger.append_evaluation(
        path,
        ORG,
        "digits",
        {
            "run_id": "run-a",
            "server_round": 2,
            "metric": "accuracy",
            "value": 0.8,
            "num_examples": 40,
            "time": "t",
        },
    )
    return path


def test_node_ledger_prints_every_row_as_json(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(["node", "ledger", "--state-dir", str(state_dir), "--json"])

    # Assert
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert sorted((r["organization_id"], r["task"], r["unit"], r["server_round"]) for r in rows) == sorted(
        [
            (ORG, "digits", "record", 1),
            (ORG, "digits", "record", 2),
            (ORG, "digits", "user", 1),
            (OTHER, "time_estimation", "user", 4),
        ]
    )
    assert {r["epsilon"] for r in rows} == {0.5, 0.7, 0.9, 1.5}


def test_node_ledger_filters_by_org_and_task(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(
        ["node", "ledger", "--state-dir", str(state_dir), "--org", ORG.upper(), "--task", "digits", "--json"]
    )

    # Assert
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {(r["unit"], r["server_round"]) for r in rows} == {("record", 1), ("record", 2), ("user", 1)}


def test_node_ledger_table_names_run_round_unit_and_epsilon(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["node", "ledger", "--state-dir", str(state_dir), "--task", "time_estimation"])

    # Assert
    out = capsys.readouterr().out
    assert code == 0
    assert "run-a" in out and "user" in out and "1.5" in out


def test_node_evaluations_prints_the_kept_metrics(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["node", "evaluations", "--state-dir", str(state_dir), "--json"])

    # Assert
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and len(rows) == 1
    assert rows[0]["value"] == 0.8 and rows[0]["num_examples"] == 40 and rows[0]["organization_id"] == ORG


def test_missing_state_dir_is_one_line_and_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["node", "ledger", "--state-dir", str(tmp_path / "nowhere")])

    # Assert
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "does not exist" in err


def test_corrupt_ledger_file_is_refused_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    (tmp_path / "ledger-x-digits-record.json").write_text("{not json")

    # Execute
    code = main(["node", "ledger", "--state-dir", str(tmp_path)])

    # Assert
    assert code != 0 and "not a node state file" in capsys.readouterr().err


def test_infinite_epsilon_prints_as_valid_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a non-private release is in the ledger with epsilon = inf.
    node_ledger.save_ledger(
        tmp_path, ORG, "digits", node_ledger.NON_PRIVATE, [_row(1, float("inf"), "non_private")]
    )

    # Execute
    code = main(["node", "ledger", "--state-dir", str(tmp_path), "--json"])

    # Assert
    out = capsys.readouterr().out
    assert code == 0 and "Infinity" not in out
    assert json.loads(out)[0]["epsilon"] == "inf"


def test_pre_unit_ledger_file_is_listed_as_record_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    legacy = node_ledger.legacy_ledger_path(tmp_path, ORG, "digits")
    legacy.write_text(json.dumps([{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3}]))

    # Execute
    code = main(["node", "ledger", "--state-dir", str(tmp_path), "--json"])

    # Assert
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [(r["organization_id"], r["task"], r["unit"]) for r in rows] == [(ORG, "digits", "record")]


def test_node_commands_import_no_torch_opacus_or_flower() -> None:
    # Execute: a fresh interpreter, as the console script starts.
    code = (
        "import sys, orchestrator.cli.node_commands, fl_client.node_ledger;"
        "print(sorted(m for m in ('torch', 'opacus', 'flwr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    # Assert
    assert out.strip() == "[]"


def test_oversized_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    path = tmp_path / "ledger-x-digits-record.json"
    path.write_text(json.dumps({"rows": [_row(1, 0.5)] * 50}))
    monkeypatch.setattr(node_ledger, "MAX_FILE_BYTES", 100)

    # Execute / Assert
    with pytest.raises(Exception, match="over the 100-byte limit"):
        node_ledger.read_all(tmp_path, node_ledger.LEDGER_PREFIX)


@settings(max_examples=50, deadline=None)
@given(
    users=st.lists(st.uuids().map(str), min_size=0, max_size=60, unique=True),
    fraction=st.floats(min_value=0.0, max_value=0.99),
    key=st.text(min_size=1, max_size=20),
)
def test_held_out_split_is_a_partition_by_user_and_stable(
    users: list[str], fraction: float, key: str
) -> None:
    # Execute
    train, held = split_users(key, users, fraction)
    again_train, again_held = split_users(key, list(reversed(users)), fraction)

    # Assert: disjoint, complete, and the same users on each side whatever the order.
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(users)
    assert set(again_train) == set(train) and set(again_held) == set(held)
