"""What Prometheus remote-write metadata declares, and which of it the gateway must produce.

A remote-write request may carry ``metadata`` (family name and type; Prometheus sends all of
it again every ``metadata_config.send_interval``, 1 minute by default). The gateway expands
each entry to measurements (:func:`metricsflow.model.declarations.expand_family`) and produces
the result as ``kinds1`` records to every partition of the topic
(:meth:`gateway.producer.KafkaWriter.write_declarations`), before the request's samples.

Producing the same declarations to every partition every minute would be waste, so
:class:`AnnouncedKinds` remembers, per gateway process, what it produced for each
``(db, rp, measurement)`` and when: a declaration is produced again only when its kind changed
or when it was last produced ``reannounce_s`` ago or more (a worker that starts from a log whose
older declarations Kafka's retention removed learns them again). It is remembered only once
Kafka acknowledged it. Two gateway processes, or two concurrent requests, may both produce a
declaration: a repeat is harmless (the worker applies the same kind again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from metricsflow.model.declarations import DeclaredKind, expand_family

MAX_REMEMBERED: Final = 200_000
"""Most ``(db, rp, measurement)`` remembered; beyond, the memory is cleared (everything is
produced again on its next arrival), so that a client sending endless families cannot grow
the gateway's memory without bound."""


def declared_kinds(entries: Iterable[tuple[str, int]]) -> dict[str, DeclaredKind]:
    """The measurements the ``(family, type)`` metadata entries of one request declare.

    When two entries declare the same measurement, the later one wins (Prometheus sends one
    entry per family)."""
    kinds: dict[str, DeclaredKind] = {}
    for family, metric_type in entries:
        kinds.update(expand_family(family, metric_type))
    return kinds


class AnnouncedKinds:
    """The declarations this gateway process produced, by ``(db, rp)`` and measurement, with
    the time (``clock``, seconds) Kafka acknowledged them."""

    def __init__(
        self,
        reannounce_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        self.reannounce_s = reannounce_s
        self._clock = clock
        self._max_remembered = max_remembered
        self._produced: dict[tuple[str, str | None, str], tuple[DeclaredKind, float]] = {}

    def __len__(self) -> int:
        return len(self._produced)

    def due(
        self, db: str, rp: str | None, kinds: Mapping[str, DeclaredKind]
    ) -> dict[str, DeclaredKind]:
        """The part of ``kinds`` to produce: new, changed, or last produced
        ``reannounce_s`` ago or more."""
        now = self._clock()
        out: dict[str, DeclaredKind] = {}
        for measurement, kind in kinds.items():
            seen = self._produced.get((db, rp, measurement))
            if seen is None or seen[0] is not kind or now - seen[1] >= self.reannounce_s:
                out[measurement] = kind
        return out

    def produced(self, db: str, rp: str | None, kinds: Mapping[str, DeclaredKind]) -> None:
        """Remember that Kafka acknowledged ``kinds`` for ``(db, rp)`` now."""
        now = self._clock()
        if len(self._produced) + len(kinds) > self._max_remembered:
            self._produced.clear()
        for measurement, kind in kinds.items():
            self._produced[(db, rp, measurement)] = (kind, now)
