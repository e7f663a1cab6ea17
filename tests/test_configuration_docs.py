"""docs/configuration.md is generated from the code and documents every setting.

The page must equal ``tools/docs_config.py``'s ``render()``; every settings field and every plain
environment variable the code reads must have a description; the run-environment table's
defaults must be the ones the modules that read those variables use.
"""

from __future__ import annotations

import re
import runpy
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic_settings import BaseSettings

from metricsflow.cli import cli
from metricsflow.infra import gateway as infra_gateway
from metricsflow.infra import settings as infra_settings
from metricsflow.infra.settings import RUN_ENVIRONMENT
from metricsflow.worker.settings import DEFAULT_WORKER_PORT, WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"
# A script outside both packages (it needs the gateway's and the engine's settings classes).
docs_config = SimpleNamespace(**runpy.run_path(str(ROOT / "tools" / "docs_config.py")))
SETTINGS_CLASSES = [section.settings_class for section in docs_config.SECTIONS]


def test_committed_page_is_the_generated_one() -> None:
    expected = docs_config.render()
    assert PAGE.read_text(encoding="utf-8") == expected, (
        "docs/configuration.md is out of date with the settings classes; regenerate it with "
        f"`{docs_config.REGENERATE}` and commit the result"
    )


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_a_description(settings_class: type[BaseSettings]) -> None:
    missing = [
        name
        for name, info in settings_class.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing, f"{settings_class.__name__} fields without a description: {missing}"


def test_every_run_variable_is_documented_once() -> None:
    names = [v.name for v in RUN_ENVIRONMENT]
    assert len(names) == len(set(names))
    assert all(v.name.startswith("METRICSFLOW_") for v in RUN_ENVIRONMENT)
    assert all(v.default.strip() and v.meaning.strip() for v in RUN_ENVIRONMENT)


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    documented = {v.name for v in RUN_ENVIRONMENT}
    documented |= {"METRICSFLOW_" + name.upper() for name in WorkerSettings.model_fields}
    documented.add("METRICSFLOW_CONFIG_FILE")  # the worker's TOML file, in the page's intro
    literal = re.compile(r"[\"'](METRICSFLOW_[A-Z0-9_]+)[\"']")
    found: dict[str, str] = {}
    for package in ("metricsflow", "gateway"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in literal.findall(path.read_text(encoding="utf-8")):
                found.setdefault(name, str(path.relative_to(ROOT)))
    undocumented = {name: where for name, where in found.items() if name not in documented}
    assert not undocumented, (
        f"environment variables read but not documented: {undocumented}; add them to "
        "RUN_ENVIRONMENT in metricsflow/infra/settings.py"
    )


def test_run_environment_defaults_are_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = {v.name: v.default for v in RUN_ENVIRONMENT}
    assert defaults["METRICSFLOW_KAFKA_PORT"] == str(infra_settings.DEFAULT_KAFKA_PORT)
    assert defaults["METRICSFLOW_KAFKA_CONTROLLER_PORT"] == str(
        infra_settings.DEFAULT_KAFKA_CONTROLLER_PORT
    )
    assert defaults["METRICSFLOW_INFLUXDB_PORT"] == str(infra_settings.DEFAULT_INFLUXDB_PORT)
    assert defaults["METRICSFLOW_INFLUXDB_RPC_PORT"] == str(
        infra_settings.DEFAULT_INFLUXDB_RPC_PORT
    )
    assert defaults["METRICSFLOW_GATEWAY_PORT"] == str(infra_gateway.DEFAULT_GATEWAY_PORT)
    assert defaults["METRICSFLOW_KAFKA_TOPIC"] == infra_gateway.DEFAULT_TOPIC
    assert defaults["METRICSFLOW_KAFKA_TOPIC"] == WorkerSettings.model_fields["kafka_topic"].default
    assert defaults["METRICSFLOW_KAFKA_PARTITIONS"] == str(infra_gateway.DEFAULT_PARTITIONS)
    assert defaults["METRICSFLOW_WORKER_PORT"] == str(DEFAULT_WORKER_PORT)
    for name in ("METRICSFLOW_INFRA_DIR", "METRICSFLOW_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/home/someone")
    settings = infra_settings.InfraSettings.from_env()
    assert settings.infra_dir == (Path.cwd() / defaults["METRICSFLOW_INFRA_DIR"]).resolve()
    assert settings.cache_dir == Path(defaults["METRICSFLOW_CACHE_DIR"]).expanduser().resolve()
    monkeypatch.delenv("METRICSFLOW_LOG_LEVEL", raising=False)
    (log_level,) = [p for p in cli.params if p.name == "log_level"]
    assert callable(log_level.default)
    assert log_level.default() == defaults["METRICSFLOW_LOG_LEVEL"]


def test_toml_example_names_real_fields_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METRICSFLOW_CONFIG_FILE", raising=False)
    data = tomllib.loads(docs_config.TOML_EXAMPLE)
    assert set(data) <= set(WorkerSettings.model_fields)
    for key in data:
        monkeypatch.delenv("METRICSFLOW_" + key.upper(), raising=False)
    settings = WorkerSettings(**data)
    assert settings.runner_config().worker_id == data["worker_id"]
    assert docs_config.TOML_EXAMPLE in PAGE.read_text(encoding="utf-8")
