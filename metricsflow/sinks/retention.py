"""Points beyond a tier's retention: not sent, counted per tier, summarized in one log line.

InfluxDB 1.x drops a point whose timestamp is older than ``now - <retention policy duration>``
and answers ``400 {"error":"partial write: points beyond retention policy dropped=N"}``. An
import of old history would then cost a 400 per batch, and bisecting it down to single lines
would cost one request (and log lines) per point. The sink knows each tier's retention (it
creates the policies), so it leaves such points out before sending (:func:`drop_beyond_retention`)
and understands the answer when a point crossed the edge in flight
(:func:`retention_only_drops`): neither is bisected nor dead-lettered — a point InfluxDB will
not keep is not an error of the pipeline. They are counted per tier
(``beyond_retention_points_total{tier}``) and summarized by :class:`RetentionDropLog`.
"""

from __future__ import annotations

import logging
import re
import time

import orjson

from metricsflow.model.columnar import record_lines

logger = logging.getLogger(__name__)

_RETENTION_ONLY = re.compile(r"partial write: points beyond retention policy dropped=(\d+)")


def retention_only_drops(error: str) -> int | None:
    """``N`` when InfluxDB's error says that it only dropped ``N`` points beyond retention
    (the rest of the request was written); ``None`` for any other error."""
    text = error.strip()
    try:
        decoded = orjson.loads(text)
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        text = decoded["error"].strip()
    match = _RETENTION_ONLY.fullmatch(text)
    return int(match.group(1)) if match else None


def drop_beyond_retention(body: bytes, cutoff_ns: int) -> tuple[bytes, int, int]:
    """Leave out the lines whose timestamp is before ``cutoff_ns``.

    Returns ``(body of the kept lines, kept lines, dropped lines)``. A line whose last token is
    not an integer timestamp is kept (InfluxDB judges it, and rejects it with its own error).
    """
    lines = record_lines(body)  # a string field value may hold a newline
    kept: list[bytes] = []
    dropped = 0
    for line in lines:
        if not line:
            continue
        try:
            ts = int(line[line.rfind(b" ") + 1 :])
        except ValueError:
            kept.append(line)
            continue
        if ts < cutoff_ns:
            dropped += 1
        else:
            kept.append(line)
    if not dropped:
        return body, len(kept), 0
    return b"\n".join(kept), len(kept), dropped


class RetentionDropLog:
    """Accumulates points left out per tier; logs one summary line per ``interval_s``."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._counts: dict[str, int] = {}
        self._since = time.monotonic()

    def add(self, tier: str, points: int) -> None:
        self._counts[tier] = self._counts.get(tier, 0) + points

    def maybe_log(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self._counts or (not force and now - self._since < self.interval_s):
            return
        summary = " ".join(f"{tier}={n}" for tier, n in sorted(self._counts.items()))
        logger.info(
            "points beyond their tier's retention not sent interval_s=%.0f %s",
            now - self._since,
            summary,
        )
        self._counts = {}
        self._since = now
