"""``Settings`` reads ``ACCUTE_`` variables itself: the rules pydantic-settings applied still hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from schema.config import Settings


def test_variables_fill_settings_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setenv("ACCUTE_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("accute_database_connect_timeout_s", "7")
    monkeypatch.setenv("ACCUTE_DEBUG", "true")
    monkeypatch.setenv("ACCUTE_WEIGHTS_DIR", "/tmp/w")
    monkeypatch.setenv("ACCUTE_NOT_A_SETTING", "ignored")

    # Execute
    settings = Settings()

    # Assert
    assert settings.database_url == "sqlite:///from-env.db"
    assert settings.database_connect_timeout_s == 7
    assert settings.debug is True
    assert settings.weights_dir == Path("/tmp/w")
    assert not hasattr(settings, "not_a_setting")


def test_arguments_take_precedence_over_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCUTE_DEFAULT_EPSILON_CAP", "3.5")

    assert Settings(default_epsilon_cap=2.0).default_epsilon_cap == 2.0
    assert Settings().default_epsilon_cap == 3.5


def test_dict_settings_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCUTE_PUBLISH_MIN_METRIC", '{"digits": 0.85}')

    assert Settings().publish_min_metric == {"digits": 0.85}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ACCUTE_DATABASE_CONNECT_TIMEOUT_S", "0"),
        ("ACCUTE_ACCOUNTANT", "gdp"),
        ("ACCUTE_UPSTREAM_CLIENT", "curl"),
    ],
)
def test_an_invalid_variable_names_its_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError) as raised:
        Settings()

    assert raised.value.errors()[0]["loc"][0] == variable.removeprefix("ACCUTE_").lower()


def test_a_dict_setting_that_is_not_json_is_one_configuration_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.cli.context import load_settings
    from schema.errors import ConfigurationError

    monkeypatch.setenv("ACCUTE_PUBLISH_MIN_METRIC", "digits=0.85")

    with pytest.raises(ConfigurationError) as raised:
        load_settings()

    assert "publish_min_metric" in str(raised.value) and "JSON" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_without_variables_the_defaults_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("ACCUTE_")]:
        monkeypatch.delenv(name)

    settings = Settings()

    assert settings.database_url == "sqlite:///accute.db"
    assert settings.accountant == "rdp"
    assert settings.price_table["default"] == {"input": 5.0, "output": 15.0}
