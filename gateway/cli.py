"""``metricsflow gateway``: serve the gateway (:mod:`gateway.server`: uvicorn, httptools)."""

from __future__ import annotations

import os

import click


@click.command("gateway")
@click.option("--host", default=None, help="Listen address (env GATEWAY_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (env GATEWAY_PORT, 8186).")
@click.option("--workers", type=int, default=None, help="Worker processes (env GATEWAY_WORKERS).")
@click.option("--bootstrap-servers", default=None, help="Kafka (env GATEWAY_BOOTSTRAP_SERVERS).")
@click.option("--topic", default=None, help="Kafka topic (env GATEWAY_TOPIC, metrics).")
def gateway(
    host: str | None,
    port: int | None,
    workers: int | None,
    bootstrap_servers: str | None,
    topic: str | None,
) -> None:
    """Run the HTTP gateway: InfluxDB v1/v2, Prometheus remote write, JSON -> Kafka."""
    from gateway.server import serve
    from gateway.settings import GatewaySettings

    # Options become environment variables so that every uvicorn worker process sees them.
    for name, value in (
        ("HOST", host),
        ("PORT", port),
        ("WORKERS", workers),
        ("BOOTSTRAP_SERVERS", bootstrap_servers),
        ("TOPIC", topic),
    ):
        if value is not None:
            os.environ[f"GATEWAY_{name}"] = str(value)
    serve(GatewaySettings())
