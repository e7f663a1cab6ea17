"""The ``metricsflow`` command line: one entry point, one subcommand group per component.

Each component registers its own group here (infrastructure, gateway, worker, savepoints,
checkpoints); the modules are imported lazily so that ``metricsflow --help`` stays fast.
"""

from __future__ import annotations

import logging
import os

import click


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
    from gateway.cli import gateway

    cli.add_command(gateway)
    from metricsflow.worker.cli import checkpoint, savepoint, worker

    for command in (worker, savepoint, checkpoint):
        cli.add_command(command)


def main() -> None:
    _register()
    cli()
