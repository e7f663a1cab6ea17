"""``metricsflow infra``: install, start, stop and inspect the local Kafka and InfluxDB.

Ports and directories come from ``METRICSFLOW_*`` environment variables (see
:mod:`metricsflow.infra.settings`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from metricsflow.errors import MetricsflowError
from metricsflow.infra.base import ManagedServer
from metricsflow.infra.influxdb import install_debian_packages
from metricsflow.infra.kafka import KAFKA_VERSION, install_kafka
from metricsflow.infra.process import read_pid_file
from metricsflow.infra.settings import InfraSettings
from metricsflow.infra.stack import (
    INFRA_COMPONENTS,
    RUN_COMPONENTS,
    build_servers,
    ready_line,
    run_foreground,
    start_all,
    stop_all,
)


def _settings() -> InfraSettings:
    try:
        return InfraSettings.from_env()
    except MetricsflowError as exc:
        raise click.ClickException(str(exc)) from exc


def _fail(exc: MetricsflowError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group()
def infra() -> None:
    """Local infrastructure: a Kafka broker and an InfluxDB server on 127.0.0.1.

    \b
    Environment (defaults):
      METRICSFLOW_INFRA_DIR              .run   (data, logs, PID files)
      METRICSFLOW_CACHE_DIR              ~/.cache/metricsflow
      METRICSFLOW_KAFKA_PORT             9092
      METRICSFLOW_KAFKA_CONTROLLER_PORT  9093
      METRICSFLOW_INFLUXDB_PORT          8086
      METRICSFLOW_INFLUXDB_RPC_PORT      8088
    """


@infra.command()
def install() -> None:
    """Install Kafka's jars (cached) and InfluxDB/Prometheus (apt) if missing."""
    settings = _settings()
    try:
        libs = install_kafka(settings.cache_dir)
        installed = install_debian_packages()
    except MetricsflowError as exc:
        raise _fail(exc) from exc
    click.echo(f"kafka {KAFKA_VERSION}: {libs}")
    click.echo(
        "debian packages: " + (f"installed {', '.join(installed)}" if installed else "present")
    )


def _run_components(references: Sequence[str], foreground: bool) -> None:
    settings = _settings()
    try:
        servers = build_servers(settings, references)
        if foreground:
            sys.exit(run_foreground(servers))
        started = start_all(servers)
    except MetricsflowError as exc:
        raise _fail(exc) from exc
    for server in servers:
        state = "started" if server in started else "already running"
        click.echo(f"{server.name}: {state} at {server.address} (data: {server.data_dir})")
    click.echo(ready_line(servers))


@infra.command()
@click.option(
    "--foreground",
    is_flag=True,
    help="Stay in the foreground; stop what was started on SIGINT/SIGTERM.",
)
def up(foreground: bool) -> None:
    """Start Kafka and InfluxDB (idempotent: healthy servers are left alone)."""
    _run_components(INFRA_COMPONENTS, foreground)


@infra.command()
def run() -> None:
    """Start every component of `make run` in the foreground, print the ready line, and stop
    what was started on SIGINT/SIGTERM."""
    _run_components(RUN_COMPONENTS, foreground=True)


@infra.command()
def down() -> None:
    """Stop the servers started from this infra dir, by their PID files."""
    settings = _settings()
    servers = build_servers(settings, RUN_COMPONENTS)
    try:
        for server in reversed(servers):
            stopped = server.stop()
            click.echo(f"{server.name}: {'stopped' if stopped else 'not running'}")
    except MetricsflowError as exc:
        raise _fail(exc) from exc


def _describe(server: ManagedServer) -> tuple[bool, str]:
    running = server.is_running()
    healthy = running and server.health()
    pid_file = server.data_dir / f"{server.name}.pid"
    record = read_pid_file(pid_file) if running else None
    state = "healthy" if healthy else ("unhealthy" if running else "stopped")
    pid = f" pid={record.pid}" if record else ""
    return healthy, f"{server.name}: {state} address={server.address}{pid} data={server.data_dir}"


@infra.command()
def status() -> None:
    """Show each server's state; exit 1 unless all are healthy."""
    settings = _settings()
    all_healthy = True
    for server in build_servers(settings, INFRA_COMPONENTS):
        healthy, line = _describe(server)
        all_healthy &= healthy
        click.echo(line)
    if not all_healthy:
        sys.exit(1)


__all__ = ["infra", "stop_all"]
