"""The consent policy is pure: which consents a model type needs, and how it is configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from consent_gate.policy import BUILT_IN_MODEL_TYPES, ConsentPolicy
from schema.errors import ConfigurationError, InvalidInputError

FL = ("ai_training", "federated_learning", "vamn_contribution")


@pytest.mark.parametrize("model_type", BUILT_IN_MODEL_TYPES)
def test_every_built_in_model_type_feeds_vamn_and_needs_three_consents(model_type: str) -> None:
    assert ConsentPolicy.default().required_consents(model_type) == FL


def test_built_in_model_types_are_the_seven_named_ones() -> None:
    assert set(BUILT_IN_MODEL_TYPES) == {
        "time_estimation",
        "document_templates",
        "compliance_checks",
        "digits",
        "workflow_patterns",
        "tax_rules",
        "workload_prediction",
    }


def test_model_type_outside_vamn_needs_only_the_base_consents() -> None:
    policy = ConsentPolicy.from_dict({"model_types": {"local": {"feeds_vamn": False}}})
    assert policy.required_consents("local") == ("ai_training", "federated_learning")
    assert policy.required_consents("digits") == FL  # defaults kept


def test_extra_and_base_are_configurable_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'base = ["federated_learning"]\nvamn = []\n[model_types.digits]\nextra = ["document_scanning"]\n'
    )
    policy = ConsentPolicy.from_toml(path)
    assert policy.required_consents("digits") == ("document_scanning", "federated_learning")
    assert policy.required_consents("tax_rules") == ("federated_learning",)
    assert ConsentPolicy.from_dict(policy.as_dict()) == policy
    assert "document_scanning" in policy.training_consents()


def test_unknown_model_type_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"'digitz' is not known; use one of: compliance_checks"):
        ConsentPolicy.default().required_consents("digitz")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"base": ["ai_training", "sharing"]}, "'sharing' is not allowed"),
        ({"base": []}, "at least one"),
        ({"base": "ai_training"}, "must be a list"),
        ({"bases": ["ai_training"]}, "unknown key(s) bases"),
        ({"model_types": {"digits": {"feeds_vamn": "yes"}}}, "true or false"),
        ({"model_types": {"digits": {"extras": []}}}, "takes feeds_vamn"),
    ],
)
def test_bad_policy_is_a_configuration_error(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ConsentPolicy.from_dict(data)
    assert fragment in str(caught.value)


def test_unreadable_or_invalid_toml_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        ConsentPolicy.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("base = [")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        ConsentPolicy.from_toml(bad)
