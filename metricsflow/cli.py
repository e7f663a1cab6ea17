"""The ``metricsflow`` command line: one entry point, one subcommand group per component.

The engine's own commands (infrastructure, worker, savepoints, checkpoints) are registered
here; the modules are imported lazily so that ``metricsflow --help`` stays fast. Commands of
other packages are plugins: a ``click`` command published under the entry-point group
``metricsflow.commands`` (the gateway's ``metricsflow gateway``: ``pyproject.toml``). The
engine finds them by name and never imports their package itself.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points

import click

#: Entry-point group of the subcommands other packages add to ``metricsflow``.
COMMAND_GROUP = "metricsflow.commands"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default=lambda: os.environ.get("METRICSFLOW_LOG_LEVEL", "INFO"),
    show_default="INFO (env METRICSFLOW_LOG_LEVEL)",
    help="Python logging level.",
)
def cli(log_level: str) -> None:
    """metricsflow: downsample monitoring metrics from Kafka into InfluxDB tiers."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs every request at INFO: one line per InfluxDB write is noise, not news.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def _register() -> None:
    from metricsflow.infra.cli import infra

    cli.add_command(infra)
    from metricsflow.worker.cli import checkpoint, savepoint, worker

    for command in (worker, savepoint, checkpoint):
        cli.add_command(command)
    _register_plugins()


def _register_plugins() -> None:
    """Add the commands of the :data:`COMMAND_GROUP` entry points. One that cannot be loaded
    is reported on stderr and left out: it must not take the engine's commands down."""
    for entry_point in entry_points(group=COMMAND_GROUP):
        try:
            command = entry_point.load()
        except Exception as exc:
            click.echo(
                f"metricsflow: command {entry_point.name!r} ({entry_point.value}) could not be "
                f"loaded: {exc!r}",
                err=True,
            )
            continue
        if not isinstance(command, click.Command):
            click.echo(
                f"metricsflow: command {entry_point.name!r} ({entry_point.value}) is a "
                f"{type(command).__name__}, not a click command",
                err=True,
            )
            continue
        cli.add_command(command, entry_point.name)


def main() -> None:
    _register()
    cli()
