"""Worker settings: the TOML file, the environment, and their precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from metricsflow.errors import ConfigurationError
from metricsflow.worker.settings import WorkerSettings


@pytest.fixture(autouse=True)
def _no_config_file_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    # WorkerSettings.load() records the file in METRICSFLOW_CONFIG_FILE for the process
    monkeypatch.delenv("METRICSFLOW_CONFIG_FILE", raising=False)
    monkeypatch.delenv("METRICSFLOW_ALLOWED_LATENESS", raising=False)


def test_a_toml_file_sets_settings_and_the_environment_wins_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('kafka_topic = "from-file"\nallowed_lateness = "2m"\n')
    monkeypatch.setenv("METRICSFLOW_ALLOWED_LATENESS", "5m")
    settings = WorkerSettings.load(config)
    assert settings.kafka_topic == "from-file"
    assert settings.allowed_lateness == "5m"


def test_a_misspelled_toml_key_is_refused_with_the_closest_setting_named(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('kafka_topik = "metrics"\n')
    with pytest.raises(ConfigurationError, match=r"unknown setting 'kafka_topik'.*'kafka_topic'"):
        WorkerSettings.load(config)


def test_an_unparseable_toml_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text("kafka_topic = \n")
    with pytest.raises(ConfigurationError, match="cannot be read"):
        WorkerSettings.load(config)
