"""The worker's HTTP API (Flink's REST API, made small) and its lifespan, which runs the job.

``GET /health``, ``GET /metrics`` (Prometheus), ``GET /jobs/overview``, ``GET /checkpoints``,
``POST /savepoints`` (trigger), ``GET /savepoints``, ``POST /stop`` (stop-with-savepoint),
``GET /state/{db}/{series_key}`` (queryable state: in-progress aggregates of one series).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from metricsflow.checkpointing.coordinator import CompletedCheckpoint
from metricsflow.job.runner import DownsamplingRunner
from metricsflow.worker.metrics import WorkerCollector

logger = logging.getLogger(__name__)


def _checkpoint_json(c: CompletedCheckpoint) -> dict[str, Any]:
    return {
        "id": c.checkpoint_id,
        "location": c.location,
        "is_savepoint": c.is_savepoint,
        "state_size": c.state_size,
        "trigger_timestamp_ns": c.metadata.trigger_timestamp_ns,
    }


def list_savepoints(savepoint_dir: Path) -> list[dict[str, Any]]:
    if not savepoint_dir.is_dir():
        return []
    return [
        {
            "location": str(p),
            "complete": (p / "_metadata").is_file(),
            "modified_ns": p.stat().st_mtime_ns,
        }
        for p in sorted(savepoint_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        if p.is_dir() and p.name.startswith("savepoint-")
    ]


def create_app(
    runner: DownsamplingRunner, *, on_finished: Callable[[BaseException | None], None] | None = None
) -> FastAPI:
    """The app; its lifespan runs ``runner`` and reports how it ended to ``on_finished``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(runner.run(), name="runner")

        def done(t: asyncio.Task[None]) -> None:
            error = None if t.cancelled() else t.exception()
            if error is not None:
                logger.error("job failed error=%r", error)
            if on_finished is not None:
                on_finished(error)

        task.add_done_callback(done)
        try:
            yield
        finally:
            if not task.done():
                runner.cancel()
                await asyncio.gather(task, return_exceptions=True)

    app = FastAPI(title="metricsflow worker", lifespan=lifespan)
    registry = CollectorRegistry()
    registry.register(WorkerCollector(runner))

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = runner.state == "RUNNING"
        body = {
            "status": "ok" if ok else "unavailable",
            "job_state": runner.state,
            "influxdb_blocked": runner.sink.stats.blocked,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/jobs/overview")
    async def overview() -> dict[str, Any]:
        coord = runner.job.coordinator
        latest = coord.latest_completed_checkpoint()
        return {
            "jobs": [
                {
                    "name": runner.job.graph.name,
                    "state": runner.state,
                    "worker_id": runner.config.worker_id,
                    "start_time_ns": runner.started_ns,
                    "key_groups": sorted(runner.job.key_groups),
                    "tiers": [t.name for t in runner.config.job.tiers],
                    "points_in": runner.source.stats.points_in,
                    "points_out": runner.sink.stats.points_written,
                    "restarts": runner.restarts,
                    "last_failure": runner.last_failure,
                    "latest_checkpoint": None if latest is None else _checkpoint_json(latest),
                }
            ]
        }

    @app.get("/checkpoints")
    async def checkpoints() -> dict[str, Any]:
        history = list(runner.job.coordinator.history)
        latest = runner.job.coordinator.latest_completed_checkpoint()
        return {
            "counts": {
                "completed": sum(h.status == "completed" for h in history),
                "failed": sum(h.status != "completed" for h in history),
            },
            "latest": None if latest is None else _checkpoint_json(latest),
            "history": [
                {
                    "id": h.checkpoint_id,
                    "status": h.status,
                    "is_savepoint": h.is_savepoint,
                    "trigger_timestamp_ns": h.trigger_timestamp_ns,
                    "duration_ms": h.duration_ns / 1e6,
                    "state_size": h.state_size,
                    "alignment_ms": h.alignment_duration_ns / 1e6,
                    "sync_ms": h.sync_duration_ns / 1e6,
                    "async_ms": h.async_duration_ns / 1e6,
                    "failure_reason": h.failure_reason,
                }
                for h in reversed(history)
            ],
        }

    @app.post("/savepoints")
    async def trigger_savepoint() -> dict[str, Any]:
        try:
            savepoint = await runner.job.trigger_savepoint()
        except Exception as exc:
            raise HTTPException(409, f"savepoint failed: {exc}") from exc
        return _checkpoint_json(savepoint)

    @app.get("/savepoints")
    async def savepoints() -> dict[str, Any]:
        return {"savepoints": list_savepoints(runner.config.savepoint_dir)}

    @app.post("/stop")
    async def stop() -> dict[str, Any]:
        try:
            savepoint = await runner.stop_with_savepoint()
        except Exception as exc:
            raise HTTPException(409, f"stop-with-savepoint failed: {exc}") from exc
        return _checkpoint_json(savepoint)

    @app.get("/state/{db}/{series_key:path}")
    async def state(db: str, series_key: str) -> dict[str, Any]:
        try:
            return runner.queryable_state(db, series_key)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc

    return app
