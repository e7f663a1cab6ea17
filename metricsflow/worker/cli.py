"""CLI: ``metricsflow worker``, ``savepoint trigger|list``, ``checkpoint list``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from metricsflow.worker.settings import DEFAULT_WORKER_PORT

logger = logging.getLogger(__name__)

_DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_WORKER_PORT}"


@click.command("worker")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML settings file (env METRICSFLOW_CONFIG_FILE).",
)
@click.option("--from-savepoint", default=None, help="Resume from this savepoint directory.")
@click.option(
    "--allow-non-restored-state",
    is_flag=True,
    default=None,
    help="Resume even if the savepoint holds state no operator claims.",
)
@click.option("--worker-id", default=None, help="Stable worker id (env METRICSFLOW_WORKER_ID).")
@click.option("--port", type=int, default=None, help="REST API port (env METRICSFLOW_PORT).")
def worker(
    config_file: Path | None,
    from_savepoint: str | None,
    allow_non_restored_state: bool | None,
    worker_id: str | None,
    port: int | None,
) -> None:
    """Run a downsampling worker: Kafka -> tiers -> InfluxDB, with checkpoints."""
    import asyncio

    import uvicorn

    from metricsflow.job.runner import DownsamplingRunner
    from metricsflow.worker.app import create_app
    from metricsflow.worker.settings import WorkerSettings

    settings = WorkerSettings.load(
        config_file,
        from_savepoint=from_savepoint,
        worker_id=worker_id,
        port=port,
        allow_non_restored_state=allow_non_restored_state,
    )
    from metricsflow.job.lock import WorkerIdInUseError

    try:
        runner = DownsamplingRunner(settings.runner_config())
    except WorkerIdInUseError as exc:
        logger.error("worker refused: %s", exc)
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    outcome: dict[str, BaseException | None] = {}
    server: uvicorn.Server | None = None

    def finished(error: BaseException | None) -> None:
        outcome["error"] = error
        if server is not None:
            server.should_exit = True

    app = create_app(
        runner,
        on_finished=finished,
        api_token=settings.api_token,
        max_savepoints=settings.api_max_savepoints,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    logger.info(
        "worker starting worker_id=%s url=http://%s:%d topic=%s influxdb=%s",
        settings.effective_worker_id,
        settings.host,
        settings.port,
        settings.kafka_topic,
        settings.influxdb_url,
    )
    asyncio.run(server.serve())
    if outcome.get("error") is not None:
        sys.exit(1)


def _call(method: str, url: str, timeout: float = 120.0, token: str | None = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.request(method, url, timeout=timeout, headers=headers)
    if response.status_code >= 400:
        raise click.ClickException(f"{method} {url}: HTTP {response.status_code} {response.text}")
    return response.json()


@click.group("savepoint")
def savepoint() -> None:
    """Trigger and list savepoints of a running worker."""


_token_option = click.option(
    "--token",
    envvar="METRICSFLOW_API_TOKEN",
    default=None,
    help="The worker's API token (env METRICSFLOW_API_TOKEN).",
)


@savepoint.command("trigger")
@click.option("--url", default=_DEFAULT_URL, show_default=True, help="The worker's REST API.")
@click.option("--stop", is_flag=True, help="Stop the job after the savepoint (upgrade).")
@_token_option
def savepoint_trigger(url: str, stop: bool, token: str | None) -> None:
    """Take a savepoint now; prints its location."""
    result = _call("POST", f"{url.rstrip('/')}/{'stop' if stop else 'savepoints'}", token=token)
    click.echo(result["location"])


@savepoint.command("delete")
@click.argument("name")
@click.option("--url", default=_DEFAULT_URL, show_default=True, help="The worker's REST API.")
@_token_option
def savepoint_delete(name: str, url: str, token: str | None) -> None:
    """Delete a savepoint (its directory name, as `savepoint list` shows) of a running worker."""
    result = _call("DELETE", f"{url.rstrip('/')}/savepoints/{Path(name).name}", token=token)
    click.echo(result["deleted"])


@savepoint.command("list")
@click.option("--url", default=_DEFAULT_URL, show_default=True, help="The worker's REST API.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="List a savepoint directory instead of asking a worker.",
)
def savepoint_list(url: str, directory: Path | None) -> None:
    """List savepoints (location, complete)."""
    from metricsflow.worker.app import list_savepoints

    items = (
        list_savepoints(directory) if directory else _call("GET", f"{url}/savepoints")["savepoints"]
    )
    for item in items:
        click.echo(f"{item['location']}\t{'complete' if item['complete'] else 'INCOMPLETE'}")


@click.group("checkpoint")
def checkpoint() -> None:
    """Inspect the checkpoints of a running worker."""


@checkpoint.command("list")
@click.option("--url", default=_DEFAULT_URL, show_default=True, help="The worker's REST API.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def checkpoint_list(url: str, as_json: bool) -> None:
    """Checkpoint history: id, status, trigger time, duration, size, alignment time."""
    result = _call("GET", f"{url.rstrip('/')}/checkpoints")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo("id\tstatus\tsavepoint\ttrigger_ns\tduration_ms\tsize\talignment_ms")
    for h in result["history"]:
        click.echo(
            f"{h['id']}\t{h['status']}\t{h['is_savepoint']}\t{h['trigger_timestamp_ns']}"
            f"\t{h['duration_ms']:.1f}\t{h['state_size']}\t{h['alignment_ms']:.1f}"
        )
