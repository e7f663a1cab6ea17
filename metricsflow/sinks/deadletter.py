"""The sink's dead-letter file: lines InfluxDB rejected for good, one JSON object per line.

Decision (docs/operations.md, "Dead letters"): rejected lines go to an append-only JSON Lines
file on the worker's disk, not to a Kafka topic. A file needs nothing that could itself be
down when InfluxDB rejects a write (Kafka may be restarting too), is written and fsynced
before the sink moves on (so the decision survives a crash), and is trivially inspected and
replayed: ``jq -r '.lines[]' dead-letter/influxdb-*.jsonl | curl --data-binary @- ...``.

Each record::

    {"time_ns": ..., "db": "...", "rp": "...", "reason": "field_type_conflict",
     "status": 400, "error": "<InfluxDB's message>", "lines": ["<line protocol>", ...]}
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

logger = logging.getLogger(__name__)


def classify_rejection(error: str) -> str:
    """A short, stable reason for an InfluxDB rejection message (a metric label)."""
    text = error.lower()
    if "field type conflict" in text:
        return "field_type_conflict"
    if "beyond retention" in text:
        return "beyond_retention"
    if "unable to parse" in text or "bad timestamp" in text or "invalid" in text:
        return "unparseable"
    if "not allowed" in text:
        return "database_not_allowed"
    if "max-values-per-tag" in text or "max-series-per-database" in text:
        return "limit_exceeded"
    return "rejected"


class DeadLetterFile:
    """Appends rejected lines to ``<directory>/influxdb-<pid>.jsonl`` (thread-safe, fsynced)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self.path = directory / f"influxdb-{os.getpid()}.jsonl"

    def write(
        self,
        *,
        db: str,
        rp: str,
        reason: str,
        status: int,
        error: str,
        lines: Sequence[bytes],
    ) -> None:
        record = {
            "time_ns": time.time_ns(),
            "db": db,
            "rp": rp,
            "reason": reason,
            "status": status,
            "error": error,
            "lines": [line.decode("utf-8", "replace") for line in lines],
        }
        data = orjson.dumps(record) + b"\n"
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        logger.error(
            "influxdb dead letter db=%s rp=%s reason=%s status=%s points=%d error=%s file=%s",
            db,
            rp,
            reason,
            status,
            len(lines),
            error[:300],
            self.path,
        )


def read_dead_letters(directory: Path) -> list[dict[str, object]]:
    """Every record of every dead-letter file in ``directory`` (tests, tools)."""
    records: list[dict[str, object]] = []
    for path in sorted(directory.glob("influxdb-*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                records.append(orjson.loads(line))
    return records
