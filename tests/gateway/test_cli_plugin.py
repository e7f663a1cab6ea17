"""``metricsflow gateway`` is a plugin: found through the ``metricsflow.commands`` entry point,
never imported by the engine."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points

import click
import pytest

from metricsflow import cli as cli_module


def test_the_gateway_publishes_its_command_under_the_entry_point_group() -> None:
    published = {ep.name: ep.value for ep in entry_points(group=cli_module.COMMAND_GROUP)}
    assert published.get("gateway") == "gateway.cli:gateway"


def test_metricsflow_gateway_runs_the_plugin_in_a_fresh_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metricsflow", "gateway", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Run the HTTP gateway" in result.stdout
    assert "--bootstrap-servers" in result.stdout


def test_a_plugin_that_cannot_load_is_reported_and_left_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    group = cli_module.COMMAND_GROUP
    plugins = [
        EntryPoint("broken", "metricsflow_no_such_module:command", group),
        EntryPoint("not-a-command", "os:sep", group),
        EntryPoint("fine", "gateway.cli:gateway", group),
    ]
    monkeypatch.setattr(cli_module, "entry_points", lambda group: plugins)
    fresh = click.Group("metricsflow")
    monkeypatch.setattr(cli_module, "cli", fresh)
    cli_module._register_plugins()
    assert sorted(fresh.commands) == ["fine"]
    err = capsys.readouterr().err
    assert "'broken' (metricsflow_no_such_module:command) could not be loaded" in err
    assert "ModuleNotFoundError" in err
    assert "'not-a-command' (os:sep) is a str, not a click command" in err
