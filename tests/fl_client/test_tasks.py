"""The model-type registry: names, heads, deterministic models and encoders."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fl_client.tasks import TASKS, get_task, task_names
from fl_client.tasks.features import hashed_bow, token_bucket
from schema.errors import InvalidInputError
from schema.vocab import CONTRIBUTION_TYPES, VAMN_HEAD_TYPES
from tests.fl_client.conftest import firm_records


def test_registry_ships_the_four_model_types_with_valid_heads() -> None:
    # Execute
    names = task_names()

    # Assert
    assert set(names) == {"time_estimation", "document_templates", "compliance_checks", "digits"}
    assert get_task("time_estimation").head_type == "quantitative"
    assert get_task("document_templates").head_type == "semantic"
    assert get_task("compliance_checks").head_type == "citation"
    for spec in TASKS.values():
        assert spec.head_type in VAMN_HEAD_TYPES
        assert spec.contribution_type is None or spec.contribution_type in CONTRIBUTION_TYPES


def test_unknown_model_type_is_a_clear_error_listing_known_names() -> None:
    # Execute
    with pytest.raises(InvalidInputError) as raised:
        get_task("tax_magic")

    # Assert
    assert "tax_magic" in str(raised.value)
    for name in task_names():
        assert name in str(raised.value)


@pytest.mark.parametrize("name", task_names())
def test_initial_weights_depend_only_on_the_seed(name: str) -> None:
    # Prepare
    spec = get_task(name)

    # Execute
    first, again, other = spec.initial_state(3), spec.initial_state(3), spec.initial_state(4)

    # Assert
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", task_names())
def test_encoder_output_fits_the_model(name: str) -> None:
    # Prepare
    spec = get_task(name)
    records = firm_records(name, n=20)

    # Execute
    features, targets = spec.encode(records)
    outputs = spec.build_model()(features)
    losses = spec.loss(outputs, targets)

    # Assert
    assert features.shape == (20, spec.encoder.dim)
    assert features.dtype == torch.float32
    assert losses.shape == (20,)
    assert torch.isfinite(losses).all()


def test_text_from_csv_encodes_like_typed_values() -> None:
    # Prepare
    spec = get_task("time_estimation")
    typed = firm_records("time_estimation", n=5)
    as_text = [{k: str(v) for k, v in r.items()} for r in typed]

    # Execute
    typed_x, typed_y = spec.encode(typed)
    text_x, text_y = spec.encode(as_text)

    # Assert
    assert torch.equal(typed_x, text_x)
    assert torch.equal(typed_y, text_y)


def test_missing_column_and_unknown_class_are_rejected() -> None:
    # Prepare
    spec = get_task("compliance_checks")
    record = firm_records("compliance_checks", n=1)[0]
    missing = {k: v for k, v in record.items() if k != "jurisdiction"}
    unknown = {**record, "rule": "made_up_rule"}

    # Execute / Assert
    with pytest.raises(InvalidInputError, match="jurisdiction"):
        spec.encode([missing])
    with pytest.raises(InvalidInputError, match="made_up_rule"):
        spec.encode([unknown])


def test_hashed_bag_of_words_is_the_same_in_another_process() -> None:
    # Prepare
    text = "Engagement letter: scope of services, fees and terms"
    code = (
        "from fl_client.tasks.features import hashed_bow, token_bucket;"
        f"print(token_bucket('engagement', 256), hashed_bow({text!r}, 256).nonzero()[0].tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}

    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)

    # Assert
    here = f"{token_bucket('engagement', 256)} {hashed_bow(text, 256).nonzero()[0].tolist()}"
    assert out.stdout.strip() == here


def test_hashed_bag_of_words_ignores_case_and_punctuation_and_is_normalised() -> None:
    # Execute
    a = hashed_bow("Invoice #42: amount DUE", 64)
    b = hashed_bow("invoice 42 amount due", 64)

    # Assert
    assert (a == b).all()
    assert abs(float((a * a).sum()) - 1.0) < 1e-6
    assert not hashed_bow("", 64).any()
