"""Failure isolation: a record no operator can process is dead-lettered, not fatal.

Known poison (a sample outside the time range, a database name InfluxDB refuses) is refused
where records enter (the source). Anything else that raises while an operator chain processes
an element would fail the job, restart it from its checkpoint, fail again on the same record,
and stop the worker once the restart strategy gives up. Instead, in Flink's spirit (failover +
deterministic replay, decided by the runtime, not by each operator):

1. **Attribute.** A source reader says which source positions the element it returned was
   read from (:meth:`~metricsflow.runtime.source.SourceReader.last_range`, e.g. the Kafka
   offsets of one fetch). An exception from the chain while processing that element raises
   :class:`RecordProcessingError` naming the key group and that range.
2. **Restore.** The job fails and is restarted from its latest completed checkpoint, as for
   any failure: whatever the failing element had already changed in operator state is gone,
   nothing of it is applied half-way. This restart is not counted by the restart strategy.
3. **Isolate.** The range is recorded here as *suspect*; on replay the reader hands out the
   records of a suspect range one at a time. A record that fails alone is *poison*.
4. **Skip.** The reader sends a poison record to the dead-letter place (Kafka: ``<topic>.dlq``
   with partition and offset headers) before it is recorded here; the job restarts once more,
   and every replay skips it, silently: it is dead-lettered once, and never reaches an operator.

Suspect ranges and poison positions are kept in a small JSON file next to the worker's
checkpoints (written atomically, before the restart they cause), so a crash of the process
does not make a replay meet the poison again; an entry is dropped once a completed checkpoint
of its key group is past it (no replay can reach it any more).

A failure that is not the data's (a bug failing every record) must not dead-letter the whole
stream: at most ``max_poison_per_interval`` records are dead-lettered per
``interval_s``; beyond that a failure is an ordinary failure, for the restart strategy.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metricsflow.errors import MetricsflowError

logger = logging.getLogger(__name__)

_FORMAT = "metricsflow-failure-isolation"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class PositionRange:
    """Source positions ``[first, end)`` of one key group (Kafka offsets)."""

    first: int
    end: int

    def __len__(self) -> int:
        return self.end - self.first

    def __contains__(self, position: object) -> bool:
        return isinstance(position, int) and self.first <= position < self.end


class RecordProcessingError(MetricsflowError):
    """Processing an element read from ``span`` of ``key_group`` raised ``cause``.

    ``poison``: ``span`` is one record, now dead-lettered and skipped by every replay;
    otherwise ``span`` is suspect and is replayed record by record. Either way the job
    restarts from its checkpoint without counting against the restart strategy."""

    def __init__(self, key_group: int, span: PositionRange, cause: BaseException, poison: bool):
        what = "poison record" if poison else "suspect records"
        super().__init__(
            f"{what} key_group={key_group} positions=[{span.first}, {span.end}) error={cause!r}"
        )
        self.key_group = key_group
        self.span = span
        self.poison = poison


class FailureIsolation:
    """Suspect ranges and poison positions per key group (see the module docstring).

    ``path``: the JSON file that keeps them across process restarts (``None``: memory only).
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        max_poison_per_interval: int = 10,
        interval_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.max_poison_per_interval = max_poison_per_interval
        self.interval_s = interval_s
        self._clock = clock
        self._verdicts: collections.deque[float] = collections.deque()
        self.suspects: dict[int, PositionRange] = {}
        self.poison: dict[int, dict[int, str]] = {}
        self.dead_lettered = 0
        """Poison records dead-lettered by this process (a metric)."""
        self.skipped = 0
        """Replays of a poison record skipped (a metric)."""
        if path is not None and path.exists():
            self._load(path)

    # -- questions the readers ask -----------------------------------------------------------
    def is_suspect(self, key_group: int, position: int) -> bool:
        span = self.suspects.get(key_group)
        return span is not None and position in span

    def is_poison(self, key_group: int, position: int) -> bool:
        return position in self.poison.get(key_group, {})

    # -- what the source task records --------------------------------------------------------
    def may_dead_letter(self) -> bool:
        """Whether another poison verdict fits the budget (and count it if so)."""
        now = self._clock()
        while self._verdicts and self._verdicts[0] < now - self.interval_s:
            self._verdicts.popleft()
        if len(self._verdicts) >= self.max_poison_per_interval:
            return False
        self._verdicts.append(now)
        return True

    def mark_suspect(self, key_group: int, span: PositionRange) -> None:
        logger.warning(
            "processing failed, replaying the records one by one key_group=%d positions=[%d, %d)",
            key_group,
            span.first,
            span.end,
        )
        self.suspects[key_group] = span
        self._save()

    def mark_poison(self, key_group: int, position: int, error: str) -> None:
        self.poison.setdefault(key_group, {})[position] = error[:1000]
        self.dead_lettered += 1
        self._save()

    def note_skipped(self) -> None:
        self.skipped += 1

    def prune(self, key_group: int, position: int) -> None:
        """A completed checkpoint of ``key_group`` resumes at ``position``: nothing before it
        is replayed again."""
        changed = False
        span = self.suspects.get(key_group)
        if span is not None and span.end <= position:
            del self.suspects[key_group]
            changed = True
        poison = self.poison.get(key_group)
        if poison:
            for p in [p for p in poison if p < position]:
                del poison[p]
                changed = True
            if not poison:
                del self.poison[key_group]
        if changed:
            self._save()

    # -- persistence -------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != _FORMAT or doc.get("version", 0) > _VERSION:
                raise ValueError(f"not a version <= {_VERSION} {_FORMAT} file")
            self.suspects = {
                int(kg): PositionRange(int(span[0]), int(span[1]))
                for kg, span in doc["suspects"].items()
            }
            self.poison = {
                int(kg): {int(p): str(e) for p, e in positions.items()}
                for kg, positions in doc["poison"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            logger.warning("failure isolation file ignored path=%s error=%r", path, exc)
            self.suspects, self.poison = {}, {}

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {
            "format": _FORMAT,
            "version": _VERSION,
            "suspects": {str(kg): [s.first, s.end] for kg, s in self.suspects.items()},
            "poison": {
                str(kg): {str(p): e for p, e in positions.items()}
                for kg, positions in self.poison.items()
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as out:
            json.dump(doc, out)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
