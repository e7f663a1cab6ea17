"""The sink's dead-letter file: lines InfluxDB rejected for good, one JSON object per line.

Decision (docs/operations.md, "Dead letters"): rejected lines go to an append-only JSON Lines
file on the worker's disk, not to a Kafka topic. A file needs nothing that could itself be
down when InfluxDB rejects a write (Kafka may be restarting too), is written and fsynced
before the sink moves on (so the decision survives a crash), and is trivially inspected and
replayed: ``jq -r '.lines[]' dead-letter/influxdb-*.jsonl | curl --data-binary @- ...``.

Files rotate by size (:class:`RotatingJsonlFile`): when the active file would pass
``max_bytes`` it is renamed ``<prefix>-<pid>.<time_ns>.jsonl`` and a new one started; only the
newest ``max_files`` files of the directory with that prefix are kept (older ones, also of
earlier processes, are deleted), so a worker's disk use for dead letters is bounded.

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

from metricsflow.errors import ConfigurationError
from metricsflow.runtime.records import RecordBatch

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


class RotatingJsonlFile:
    """Appends JSON Lines to ``<directory>/<prefix>-<pid>.jsonl``, rotated by size, keeping
    the newest ``max_files`` files named ``<prefix>-*.jsonl`` (thread-safe)."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_files: int = 8,
        fsync: bool = True,
    ) -> None:
        if max_bytes < 1 or max_files < 1:
            raise ConfigurationError(
                f"{prefix} file rotation: max_bytes={max_bytes} and max_files={max_files} "
                "must be >= 1"
            )
        self.directory = directory
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.fsync = fsync
        self.path = directory / f"{prefix}-{os.getpid()}.jsonl"
        self.rotations = 0
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def files(self) -> list[Path]:
        """This prefix's files in the directory, oldest first."""
        found = []
        for path in self.directory.glob(f"{self.prefix}-*.jsonl"):
            try:
                found.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:
                continue
        return [p for _, _, p in sorted(found)]

    def _rotate(self) -> None:
        rotated = self.path.with_name(f"{self.path.stem}.{time.time_ns()}.jsonl")
        os.rename(self.path, rotated)
        self.rotations += 1
        old = [p for p in self.files() if p != self.path]
        for path in old[: max(0, len(old) - (self.max_files - 1))]:
            path.unlink(missing_ok=True)
        logger.info(
            "rotated file=%s to=%s deleted=%d",
            self.path,
            rotated.name,
            max(0, len(old) - (self.max_files - 1)),
        )


class DeadLetterFile:
    """Appends rejected lines to ``<directory>/influxdb-<pid>.jsonl`` (thread-safe, fsynced,
    rotated by size)."""

    def __init__(self, directory: Path, *, max_bytes: int = 64 << 20, max_files: int = 8) -> None:
        self.directory = directory
        self.file = RotatingJsonlFile(
            directory, "influxdb", max_bytes=max_bytes, max_files=max_files
        )
        self.path = self.file.path

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
        self.file.append(orjson.dumps(record) + b"\n")
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


class LatePointsFile:
    """Points beyond the allowed lateness (they are in the raw tier, not in the tiers):
    ``<dir>/late-<pid>.jsonl``, one ``{"key", "ts_ns", "value", "kg", "seq"}`` object per
    point, rotated by size like the dead-letter file.

    A replay does not append the same points again: the sink operator numbers the late points
    of each key group (``seq``, checkpointed with the job), so a replay from a checkpoint hands
    over the same numbers; the file keeps a high-water mark per ``<scope>/<key group>`` in
    ``<dir>/late-hwm.json`` and skips numbers below it. (A key group started from nothing
    again — a new checkpoint directory — would count from 0: delete ``late-hwm.json`` then.)
    """

    def __init__(
        self,
        directory: Path,
        *,
        scope: str = "",
        max_bytes: int = 64 << 20,
        max_files: int = 8,
    ) -> None:
        self.file = RotatingJsonlFile(
            directory, "late", max_bytes=max_bytes, max_files=max_files, fsync=False
        )
        self.path = self.file.path
        self.directory = directory
        self.scope = scope
        self.points = 0
        self.skipped = 0
        self._hwm_path = directory / "late-hwm.json"
        self._lock = threading.Lock()
        try:
            loaded = orjson.loads(self._hwm_path.read_bytes())
            self._hwm: dict[str, int] = {
                str(k): int(v) for k, v in loaded.items() if isinstance(v, int)
            }
        except (FileNotFoundError, orjson.JSONDecodeError, AttributeError):
            self._hwm = {}

    def write(self, batch: RecordBatch, first_seq: int = 0) -> None:
        name = f"{self.scope}/{batch.key_group}"
        with self._lock:
            start = max(0, self._hwm.get(name, 0) - first_seq)
            rows = [
                orjson.dumps(
                    {
                        "key": batch.keys[k],
                        "ts_ns": t,
                        "value": v,
                        "kg": batch.key_group,
                        "seq": first_seq + i,
                    }
                )
                + b"\n"
                for i, (k, t, v) in enumerate(
                    zip(
                        batch.key_idx.tolist(),
                        batch.ts_ns.tolist(),
                        batch.values.tolist(),
                        strict=True,
                    )
                )
                if i >= start
            ]
            self.skipped += min(start, len(batch))
            if not rows:
                return
            self.file.append(b"".join(rows))
            self._hwm[name] = first_seq + len(batch)
            tmp = self._hwm_path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(self._hwm))
            os.replace(tmp, self._hwm_path)
            self.points += len(rows)
        logger.warning(
            "late points beyond allowed lateness key_group=%d points=%d replayed_skipped=%d "
            "file=%s",
            batch.key_group,
            len(rows),
            start,
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
