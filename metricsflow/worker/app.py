"""The worker's HTTP API (Flink's REST API, made small) and its lifespan, which runs the job.

``GET /health``, ``GET /metrics`` (Prometheus), ``GET /jobs/overview``, ``GET /checkpoints``,
``POST /savepoints`` (trigger), ``GET /savepoints``, ``POST /stop`` (stop-with-savepoint),
``DELETE /savepoints/{name}``, ``GET /state/{db}/{series_key}`` (queryable state:
in-progress aggregates of one series).

Mutating endpoints (``POST``, ``DELETE``) are guarded (docs/security.md): they need
``Authorization: Bearer <api_token>`` when a token is configured, and a request a browser could
send cross-site without a CORS preflight is refused whatever the token (an ``Origin`` of
another host, ``Sec-Fetch-Site: cross-site|same-site``, or a form/text content type), so a web
page cannot stop the job. ``POST /savepoints`` keeps at most ``max_savepoints`` savepoints in
the directory (409 beyond; delete one with ``DELETE /savepoints/{name}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from metricsflow.checkpointing.coordinator import CompletedCheckpoint
from metricsflow.job.runner import DownsamplingRunner, JobStatus
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


_SIMPLE_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
_SAVEPOINT_NAME = re.compile(r"savepoint-[A-Za-z0-9_.-]+")


def check_mutation_allowed(request: Request, api_token: str | None) -> None:
    """Refuse (HTTPException) a mutating request that a browser could have sent cross-site
    without a preflight, or that lacks the configured token."""
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise HTTPException(403, f"cross-site request refused (Origin {origin!r})")
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site {fetch_site!r})")
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in _SIMPLE_CONTENT_TYPES:
        raise HTTPException(
            415, f"Content-Type {media_type!r} refused: send no body, or application/json"
        )
    if api_token is None:
        return
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(
        credential.strip().encode(), api_token.encode()
    ):
        raise HTTPException(
            401,
            "this endpoint needs Authorization: Bearer <METRICSFLOW_API_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def create_app(
    runner: DownsamplingRunner,
    *,
    on_finished: Callable[[BaseException | None], None] | None = None,
    api_token: str | None = None,
    max_savepoints: int = 20,
) -> FastAPI:
    """The app; its lifespan runs ``runner`` and reports how it ended to ``on_finished``.
    ``api_token`` guards the mutating endpoints; ``max_savepoints`` bounds ``POST
    /savepoints``."""
    savepoint_lock = asyncio.Lock()

    async def mutation_allowed(request: Request) -> None:
        check_mutation_allowed(request, api_token)

    guarded = [Depends(mutation_allowed)]

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
        ok = runner.state is JobStatus.RUNNING
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
                    "isolation_restarts": runner.isolation_restarts,
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

    @app.post("/savepoints", dependencies=guarded)
    async def trigger_savepoint() -> dict[str, Any]:
        async with savepoint_lock:  # one at a time, so the count below holds
            directory = runner.config.savepoint_dir
            existing = list_savepoints(directory)
            if len(existing) >= max_savepoints:
                raise HTTPException(
                    409,
                    f"{len(existing)} savepoints in {str(directory)!r} already, the most "
                    f"METRICSFLOW_API_MAX_SAVEPOINTS={max_savepoints} allows: delete one with "
                    "DELETE /savepoints/<name> (metricsflow savepoint delete)",
                )
            try:
                savepoint = await runner.job.trigger_savepoint()
            except Exception as exc:
                raise HTTPException(409, f"savepoint failed: {exc}") from exc
        return _checkpoint_json(savepoint)

    @app.delete("/savepoints/{name}", dependencies=guarded)
    async def delete_savepoint(name: str) -> dict[str, Any]:
        directory = runner.config.savepoint_dir
        path = directory / name
        if not _SAVEPOINT_NAME.fullmatch(name) or not path.is_dir():
            raise HTTPException(404, f"no savepoint {name!r} in {str(directory)!r}")
        await asyncio.to_thread(shutil.rmtree, path)
        logger.info("savepoint deleted location=%s", path)
        return {"deleted": str(path)}

    @app.get("/savepoints")
    async def savepoints() -> dict[str, Any]:
        return {"savepoints": list_savepoints(runner.config.savepoint_dir)}

    @app.post("/stop", dependencies=guarded)
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
