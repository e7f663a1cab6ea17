"""Merge the workers' ``sketch_<f>`` strings at query time and read percentiles from them.

A tier row's ``sketch_<f>`` is a base64 ``DDSketch`` protobuf message (DataDog's wire format,
``docs/counters-and-percentiles.md``): a logarithmic mapping of relative accuracy 1 %, a
positive and a negative store (dense ``contiguousBinCounts`` and/or sparse ``binCounts``) and
a zero count. The gateway may import nothing of the engine but :mod:`metricsflow.model`, so it
reads the message with DataDog's own ``ddsketch`` package (its generated protobuf class and its
``LogarithmicMapping``): the same format by construction, not by a copy of the worker's code.

Merging adds bucket counts (exact: the merge of the window sketches of an interval *is* the
sketch of the interval's values), raw values of the partial windows at the range edges are
added to the same buckets, and a percentile is read by InfluxDB's nearest-rank rule (0-based
rank ``floor(n * N / 100 + 0.5) - 1``, no answer when it is below 0), so it is within 1 %
(relative) of what ``SELECT PERCENTILE(f, N)`` gives over the raw points. Never an average of
stored quantiles.

Everything here is CPU work on NumPy arrays and runs off the event loop
(:func:`gateway.query.router.QueryService.run_plan` calls it in a worker thread).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from ddsketch.mapping import LogarithmicMapping
from ddsketch.pb import ddsketch_pb2  # protobuf >= 4.25 (our floor): the current generated module
from google.protobuf.message import DecodeError

from metricsflow.model import MetricsflowError

RELATIVE_ACCURACY: Final = 0.01
MAPPING: Final = LogarithmicMapping(RELATIVE_ACCURACY)
_MULTIPLIER: Final = 1.0 / math.log1p(2.0 * RELATIVE_ACCURACY / (1.0 - RELATIVE_ACCURACY))
_VALUE_FACTOR: Final = 2.0 / (1.0 + MAPPING.gamma)
_MIN_INDEXABLE: Final = MAPPING.min_possible

#: DataDog's generated ``DDSketch`` message class (untyped).
_DDSKETCH: Final[Any] = ddsketch_pb2.DDSketch

_NEGATIVE, _ZERO, _POSITIVE = 0, 1, 2

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]


class SketchDecodeError(MetricsflowError, ValueError):
    """A ``sketch_<f>`` value is not a DDSketch this gateway can merge (the statement is then
    answered from the raw tier)."""


@dataclass
class SketchAccumulator:
    """The bins of one sketch being merged: (store, bucket index, count) triples, appended
    from decoded sketches (plain lists: a sketch holds a few bins, and NumPy calls per sketch
    cost more than they save) and raw values, added up when a percentile is read."""

    stores: list[int] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)
    arrays: list[tuple[npt.NDArray[np.int8], Int64Array, Float64Array]] = field(
        default_factory=list
    )

    def add_encoded(self, text: str) -> None:
        """Merge one base64 ``DDSketch`` message."""
        try:
            msg = _DDSKETCH.FromString(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError, DecodeError) as exc:
            raise SketchDecodeError(
                f"sketch {text[:40]!r} is not a base64 DDSketch message: {exc}"
            ) from None
        mapping = msg.mapping
        if (
            not math.isclose(mapping.gamma, MAPPING.gamma, rel_tol=1e-12)
            or mapping.indexOffset != 0.0
            or mapping.interpolation != 0
        ):
            raise SketchDecodeError(
                f"sketch {text[:40]!r}: mapping gamma={mapping.gamma} indexOffset="
                f"{mapping.indexOffset} interpolation={mapping.interpolation}, expected "
                f"gamma={MAPPING.gamma} indexOffset=0 interpolation=NONE"
            )
        for kind, store in ((_POSITIVE, msg.positiveValues), (_NEGATIVE, msg.negativeValues)):
            dense = store.contiguousBinCounts
            if dense:
                offset = int(store.contiguousBinIndexOffset)
                self.stores.extend([kind] * len(dense))
                self.indexes.extend(range(offset, offset + len(dense)))
                self.counts.extend(dense)
            sparse = store.binCounts
            if sparse:
                for key, count in sparse.items():
                    self.stores.append(kind)
                    self.indexes.append(key)
                    self.counts.append(count)
        if msg.zeroCount:
            self.stores.append(_ZERO)
            self.indexes.append(0)
            self.counts.append(msg.zeroCount)

    def add_values(self, values: Sequence[float]) -> None:
        """Add raw values (those of the partial windows at the range edges)."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if not v.shape[0]:
            return
        kind = np.full(v.shape[0], _ZERO, dtype=np.int8)
        kind[v > _MIN_INDEXABLE] = _POSITIVE
        kind[v < -_MIN_INDEXABLE] = _NEGATIVE
        keys = np.zeros(v.shape[0], dtype=np.int64)
        nonzero = kind != _ZERO
        keys[nonzero] = np.ceil(np.log(np.abs(v[nonzero])) * _MULTIPLIER).astype(np.int64)
        self.arrays.append((kind, keys, np.ones(v.shape[0])))

    def percentiles(self, percents: Sequence[float]) -> list[float | None]:
        """InfluxDB's ``PERCENTILE(f, N)`` for each ``N`` (``None`` when the sketch is empty
        or the nearest rank is below the first value, as InfluxDB answers null)."""
        store = np.concatenate([np.array(self.stores, dtype=np.int8), *(a[0] for a in self.arrays)])
        index = np.concatenate(
            [np.array(self.indexes, dtype=np.int64), *(a[1] for a in self.arrays)]
        )
        count = np.concatenate(
            [np.array(self.counts, dtype=np.float64), *(a[2] for a in self.arrays)]
        )
        if bool((~np.isfinite(count) | (count < 0.0)).any()):
            raise SketchDecodeError(f"sketch bin counts must be finite and >= 0: {count}")
        keep = count > 0
        store, index, count = store[keep], index[keep], count[keep]
        if not count.shape[0]:
            return [None] * len(percents)
        # Value order: negatives by decreasing |v| (decreasing index), then zero, positives.
        order_key = np.where(store == _NEGATIVE, -index, np.where(store == _ZERO, 0, index))
        order = np.lexsort((order_key, store))
        store, index, count = store[order], index[order], count[order]
        cum = np.cumsum(count)
        total = float(cum[-1])
        rep = np.exp(index / _MULTIPLIER) * _VALUE_FACTOR
        rep = np.where(store == _ZERO, 0.0, np.where(store == _NEGATIVE, -rep, rep))
        out: list[float | None] = []
        for pct in percents:
            rank = float(math.floor(total * float(pct) / 100.0 + 0.5) - 1)
            if rank < 0:
                out.append(None)
                continue
            rank = min(rank, total - 1.0)
            pos = int(np.searchsorted(cum, rank + 0.5, side="left"))  # first cum > rank
            out.append(float(rep[min(pos, rep.shape[0] - 1)]))
        return out


def merge_percentiles(
    groups: dict[Hashable, SketchAccumulator], percents: Sequence[float]
) -> dict[Hashable, list[float | None]]:
    """The percentiles of every accumulated sketch."""
    return {key: acc.percentiles(percents) for key, acc in groups.items()}
