"""Mergeable relative-error quantile sketches (DDSketch), vectorized, in DataDog's wire format.

The algorithm is DDSketch's with its memory-optimal logarithmic index mapping: a value
``v > 0`` goes to bucket ``ceil(log_gamma(v))`` with ``gamma = (1 + a) / (1 - a)`` for relative
accuracy ``a`` (1 %), negative values to a second store by ``|v|``, values within
``min_indexable`` of zero to a zero count; a bucket ``k`` stands for ``2 * gamma**k / (1 + gamma)``,
which is within ``a`` (relative) of every value the bucket holds. Merging adds bucket counts, so
``merge(sketch(a), sketch(b)) == sketch(a + b)`` exactly.

Many sketches are handled at once as one columnar table of bins (:class:`SketchBins`): the
sketch a bin belongs to (``group``, e.g. a (key, window) row), its store (negative / zero /
positive), its bucket index and its count, sorted by (group, value order). Insertion of a batch
and merging are one sort and one ``reduceat``; quantiles of every group are one ``cumsum`` and
one ``searchsorted``. Nothing is done per value in Python.

Quantiles use InfluxDB's definition of ``PERCENTILE(f, N)`` (nearest rank: the value of 0-based
rank ``floor(n * N / 100 + 0.5) - 1`` in sorted order, clamped to ``[0, n - 1]``), so ``p99_<f>`` is
within ``a`` of what ``SELECT PERCENTILE(f, 99)`` answers over the same raw points.

The serialized form is the ``DDSketch`` protobuf message of DataDog's sketches libraries
(``IndexMapping{gamma, indexOffset=0, interpolation=NONE}``, two ``Store`` messages, a
``zeroCount``), base64-encoded so that it is an InfluxDB string field. Each store uses the dense
``contiguousBinCounts`` or the sparse ``binCounts`` map, whichever is smaller
(docs/counters-and-percentiles.md).
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from metricsflow.errors import MetricsflowError, SerializationError
from metricsflow.runtime.records import Int8Array, SketchBins
from metricsflow.windows.kernels import Float64Array, Int32Array, Int64Array, IntpArray

RELATIVE_ACCURACY: Final = 0.01
PERCENTILES: Final = (50, 90, 95, 99)

NEGATIVE: Final = 0
ZERO: Final = 1
POSITIVE: Final = 2
_KEY_BIAS = 1 << 19  # bucket indexes are within +-36,000 for float64 at 1 % accuracy
_CODE_BITS = 22


class SketchError(MetricsflowError):
    """A value cannot go into a sketch, or sketches that do not fit are combined."""


@dataclass(frozen=True)
class LogMapping:
    """DDSketch's logarithmic index mapping (``LogarithmicMapping``, index offset 0)."""

    relative_accuracy: float = RELATIVE_ACCURACY

    def __post_init__(self) -> None:
        if not 0.0 < self.relative_accuracy < 1.0:
            raise SketchError(f"relative accuracy must be in (0, 1), got {self.relative_accuracy}")

    @property
    def gamma(self) -> float:
        return 1.0 + 2.0 * self.relative_accuracy / (1.0 - self.relative_accuracy)

    @property
    def multiplier(self) -> float:
        """``1 / ln(gamma)``."""
        return 1.0 / math.log1p(2.0 * self.relative_accuracy / (1.0 - self.relative_accuracy))

    @property
    def min_indexable(self) -> float:
        """Magnitudes at or below this go to the zero count (as in DataDog's libraries)."""
        return sys.float_info.min * self.gamma

    @property
    def max_indexable(self) -> float:
        """Larger magnitudes are refused: their bucket's value would overflow float64."""
        return sys.float_info.max / self.gamma / self.gamma

    def index(self, magnitude: Float64Array) -> Int64Array:
        out: Int64Array = np.ceil(np.log(magnitude) * self.multiplier).astype(np.int64)
        return out

    def value(self, index: Int64Array) -> Float64Array:
        out: Float64Array = np.exp(index / self.multiplier) * (2.0 / (1.0 + self.gamma))
        return out


DEFAULT_MAPPING: Final = LogMapping()


def _reduce(
    group: Int64Array, store: Int8Array, index: Int64Array, count: Float64Array
) -> SketchBins:
    """Sort by (group, value order) and add up the counts of equal bins."""
    n = group.shape[0]
    if n == 0:
        return SketchBins.empty()
    if int(group.min()) < 0 or int(group.max()) >= 1 << (62 - _CODE_BITS):
        raise SketchError(f"sketch group ids must be in [0, 2**40), got {int(group.max())}")
    order_key = np.where(store == NEGATIVE, -index, index) + _KEY_BIAS
    code = (store.astype(np.int64) << 20) | order_key
    composite = (group << _CODE_BITS) | code
    order: IntpArray = np.argsort(composite, kind="stable")
    sc = composite[order]
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(sc[1:], sc[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    first = order[starts]
    return SketchBins(
        group=group[first],
        store=store[first],
        index=index[first].astype(np.int32),
        count=np.add.reduceat(count[order], starts),
    )


def from_values(
    group: Int64Array, values: Float64Array, mapping: LogMapping = DEFAULT_MAPPING
) -> SketchBins:
    """Insert a batch: value ``values[i]`` goes into sketch ``group[i]``."""
    if group.shape != values.shape:
        raise SketchError(f"{group.shape[0]} group ids for {values.shape[0]} values")
    bad = ~np.isfinite(values)
    if bool(bad.any()):
        i = int(np.flatnonzero(bad)[0])
        raise SketchError(f"cannot sketch non-finite value {float(values[i])!r} (row {i})")
    huge = np.abs(values) > mapping.max_indexable
    if bool(huge.any()):
        i = int(np.flatnonzero(huge)[0])
        raise SketchError(
            f"cannot sketch {float(values[i])!r} (row {i}): "
            f"magnitude above {mapping.max_indexable!r}"
        )
    lo = mapping.min_indexable
    store = np.full(values.shape[0], ZERO, dtype=np.int8)
    store[values > lo] = POSITIVE
    store[values < -lo] = NEGATIVE
    nonzero = store != ZERO
    index = np.zeros(values.shape[0], dtype=np.int64)
    index[nonzero] = mapping.index(np.abs(values[nonzero]))
    return _reduce(group.astype(np.int64), store, index, np.ones(values.shape[0]))


def merge(parts: Sequence[SketchBins], regroup: Int64Array | None = None) -> SketchBins:
    """Add up sketches. ``regroup[g]`` (optional) is the group that old group ``g`` goes to,
    e.g. the coarse window of a fine window's row."""
    live = [p for p in parts if p.size]
    if not live:
        return SketchBins.empty()
    group = np.concatenate([p.group for p in live])
    if regroup is not None:
        group = regroup[group]
    return _reduce(
        group,
        np.concatenate([p.store for p in live]),
        np.concatenate([p.index for p in live]).astype(np.int64),
        np.concatenate([p.count for p in live]),
    )


def groups(bins: SketchBins) -> tuple[Int64Array, IntpArray]:
    """The groups present (sorted) and the start of each one's bins."""
    n = bins.size
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.intp)
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(bins.group[1:], bins.group[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    return bins.group[starts], starts


def percentiles(
    bins: SketchBins,
    percents: Sequence[float] = PERCENTILES,
    mapping: LogMapping = DEFAULT_MAPPING,
) -> tuple[Int64Array, Float64Array]:
    """``(group ids, values[len(groups), len(percents)])`` by InfluxDB's nearest-rank rule."""
    gid, starts = groups(bins)
    out = np.empty((gid.shape[0], len(percents)), dtype=np.float64)
    if gid.shape[0] == 0:
        return gid, out
    cum = np.cumsum(bins.count)
    ends = np.append(starts[1:], bins.size) - 1
    base = np.where(starts > 0, cum[starts - 1], 0.0)
    total = cum[ends] - base
    rep = np.where(bins.store == ZERO, 0.0, mapping.value(bins.index.astype(np.int64)))
    rep = np.where(bins.store == NEGATIVE, -rep, rep)
    for j, pct in enumerate(percents):
        rank = np.floor(total * float(pct) / 100.0 + 0.5) - 1.0
        rank = np.clip(rank, 0.0, total - 1.0)
        pos = np.searchsorted(cum, base + rank + 0.5, side="left")  # first cum > base + rank
        out[:, j] = rep[pos]
    return gid, out


# --- wire format: DataDog's DDSketch protobuf message, descriptor built in code --------------

_F = descriptor_pb2.FieldDescriptorProto


def _build_message_class() -> Any:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="metricsflow_ddsketch.proto", package="metricsflow.ddsketch", syntax="proto3"
    )
    mapping = fdp.message_type.add(name="IndexMapping")
    mapping.field.add(name="gamma", number=1, type=_F.TYPE_DOUBLE, label=_F.LABEL_OPTIONAL)
    mapping.field.add(name="indexOffset", number=2, type=_F.TYPE_DOUBLE, label=_F.LABEL_OPTIONAL)
    interp = mapping.enum_type.add(name="Interpolation")
    for number, name in enumerate(("NONE", "LINEAR", "QUADRATIC", "CUBIC")):
        interp.value.add(name=name, number=number)
    mapping.field.add(
        name="interpolation",
        number=3,
        type=_F.TYPE_ENUM,
        label=_F.LABEL_OPTIONAL,
        type_name=".metricsflow.ddsketch.IndexMapping.Interpolation",
    )
    store = fdp.message_type.add(name="Store")
    entry = store.nested_type.add(name="BinCountsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_SINT32, label=_F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=_F.TYPE_DOUBLE, label=_F.LABEL_OPTIONAL)
    store.field.add(
        name="binCounts",
        number=1,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".metricsflow.ddsketch.Store.BinCountsEntry",
    )
    store.field.add(
        name="contiguousBinCounts", number=2, type=_F.TYPE_DOUBLE, label=_F.LABEL_REPEATED
    )
    store.field.add(
        name="contiguousBinIndexOffset", number=3, type=_F.TYPE_SINT32, label=_F.LABEL_OPTIONAL
    )
    sketch = fdp.message_type.add(name="DDSketch")
    for name, number in (("mapping", 1), ("positiveValues", 2), ("negativeValues", 3)):
        type_name = ".metricsflow.ddsketch." + ("IndexMapping" if number == 1 else "Store")
        sketch.field.add(
            name=name,
            number=number,
            type=_F.TYPE_MESSAGE,
            label=_F.LABEL_OPTIONAL,
            type_name=type_name,
        )
    sketch.field.add(name="zeroCount", number=4, type=_F.TYPE_DOUBLE, label=_F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("metricsflow.ddsketch.DDSketch")
    )


DDSketchMessage: Final = _build_message_class()
"""The ``DDSketch`` message class (field names and numbers as in DataDog's ``ddsketch.proto``)."""

# The encoder writes the message's bytes itself (the decoder uses the protobuf runtime, and
# the tests check that both, and DataDog's package, agree): building a message object per
# sketch cost ~120 us, this costs a few us, and one sketch is written per tier row.


@functools.lru_cache(maxsize=4096)
def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 31)


_SPARSE_BYTES_PER_BIN = 14  # map entry: tags, lengths, zigzag key, 8-byte count (upper bound)


def _sparse_entries(index: Int32Array, count: Float64Array) -> tuple[bytes, IntpArray]:
    """Every bin as a ``binCounts`` map entry, all at once: ``(bytes, entry offsets)``.

    Entry: ``0x0a <len> 0x08 <zigzag varint key> 0x11 <8-byte count>``; the key takes 1-4
    bytes, so each row is laid out with 4 key bytes and the unused ones masked away.
    """
    n = index.shape[0]
    idx = index.astype(np.int64)
    zz = (idx << 1) ^ (idx >> 63)
    klen = 1 + (zz >= 1 << 7).astype(np.int64) + (zz >= 1 << 14) + (zz >= 1 << 21)
    rows = np.zeros((n, 16), dtype=np.uint8)
    rows[:, 0] = 0x0A
    rows[:, 1] = klen + 10
    rows[:, 2] = 0x08
    for j in range(4):
        more = (j < klen - 1).astype(np.int64) << 7
        rows[:, 3 + j] = ((zz >> (7 * j)) & 0x7F) | more
    rows[:, 7] = 0x11
    rows[:, 8:] = count.astype("<f8").view(np.uint8).reshape(n, 8)
    keep = np.ones((n, 16), dtype=bool)
    keep[:, 3:7] = np.arange(4) < klen[:, None]
    offsets: IntpArray = np.concatenate(([0], np.cumsum(klen + 12))).astype(np.intp)
    return rows[keep].tobytes(), offsets


def _dense_store(index: Int32Array, count: Float64Array) -> bytes:
    lo, hi = int(index.min()), int(index.max())
    dense = np.zeros(hi - lo + 1, dtype="<f8")
    dense[index.astype(np.int64) - lo] = count
    body = b"\x12" + _varint(8 * dense.shape[0]) + dense.tobytes()
    if lo != 0:
        body += b"\x18" + _varint(_zigzag(lo))
    return body


def encode(
    bins: SketchBins, mapping: LogMapping = DEFAULT_MAPPING, dense_only: bool = False
) -> tuple[Int64Array, list[str]]:
    """``(group ids, base64 DDSketch messages)``, one string per group present.

    Each store is written dense (``contiguousBinCounts``) when that is no larger than sparse
    (``binCounts``), else sparse; ``dense_only`` always writes dense (what DataDog's Python
    package reads; its Go and Java libraries read both).
    """
    gid, _ = groups(bins)
    n = bins.size
    if n == 0:
        return gid, []
    # segments: runs of equal (group, store); bins are in value order within a group
    seg_change = np.empty(n, dtype=bool)
    seg_change[0] = True
    seg_change[1:] = (bins.group[1:] != bins.group[:-1]) | (bins.store[1:] != bins.store[:-1])
    seg = np.flatnonzero(seg_change)
    seg_end = np.append(seg[1:], n)
    seg_lo = np.minimum.reduceat(bins.index, seg)
    seg_hi = np.maximum.reduceat(bins.index, seg)
    span = seg_hi.astype(np.int64) - seg_lo + 1
    n_bins = seg_end - seg
    dense = ((n_bins >= 8) & (8 * span <= _SPARSE_BYTES_PER_BIN * n_bins)) | dense_only
    entries, offsets = _sparse_entries(bins.index, bins.count)
    head = b"\x0a\x09\x09" + struct.pack("<d", mapping.gamma)  # mapping{gamma}, offset 0, NONE
    seg_group = bins.group[seg].tolist()
    seg_store = bins.store[seg].tolist()
    seg_l, end_l, dense_l, off_l = seg.tolist(), seg_end.tolist(), dense.tolist(), offsets.tolist()
    out: list[str] = []
    parts: list[bytes] = []
    stores: dict[int, bytes] = {}
    zero = b""
    for i, g in enumerate(seg_group):
        s, e = seg_l[i], end_l[i]
        kind = seg_store[i]
        if kind == ZERO:
            zero = b"\x21" + struct.pack("<d", float(bins.count[s]))
        elif dense_l[i]:
            stores[kind] = _dense_store(bins.index[s:e], bins.count[s:e])
        else:
            stores[kind] = entries[off_l[s] : off_l[e]]
        if i + 1 == len(seg_group) or seg_group[i + 1] != g:
            parts.append(head)
            for tag, kind_ in ((b"\x12", POSITIVE), (b"\x1a", NEGATIVE)):
                body = stores.get(kind_)
                if body is not None:
                    parts += (tag, _varint(len(body)), body)
            parts.append(zero)
            out.append(base64.b64encode(b"".join(parts)).decode("ascii"))
            parts.clear()
            stores.clear()
            zero = b""
    return gid, out


def _read_store(store: Any, kind: int) -> tuple[list[int], list[float]]:
    idx: list[int] = []
    cnt: list[float] = []
    offset = int(store.contiguousBinIndexOffset)
    for i, c in enumerate(store.contiguousBinCounts):
        if c != 0.0:
            idx.append(offset + i)
            cnt.append(c)
    for k, c in store.binCounts.items():
        if c != 0.0:
            idx.append(int(k))
            cnt.append(c)
    return idx, cnt


def decode(
    encoded: Sequence[str], group: Int64Array, mapping: LogMapping = DEFAULT_MAPPING
) -> SketchBins:
    """Bins of the sketches ``encoded[i]`` (base64 DDSketch messages), as groups ``group[i]``."""
    g: list[int] = []
    s: list[int] = []
    ix: list[int] = []
    c: list[float] = []
    for i, text in enumerate(encoded):
        where = f"sketch {i} ({text[:40]!r})"
        try:
            msg = DDSketchMessage.FromString(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError, DecodeError) as exc:
            raise SerializationError(f"{where}: not a base64 DDSketch message: {exc}") from None
        m = msg.mapping
        if not math.isclose(m.gamma, mapping.gamma, rel_tol=1e-12) or m.indexOffset != 0.0:
            raise SerializationError(
                f"{where}: mapping gamma={m.gamma} indexOffset={m.indexOffset} does not match "
                f"gamma={mapping.gamma} indexOffset=0"
            )
        if m.interpolation != 0:
            raise SerializationError(f"{where}: interpolation {m.interpolation} is not NONE")
        gi = int(group[i])
        for kind, store in ((POSITIVE, msg.positiveValues), (NEGATIVE, msg.negativeValues)):
            idx, cnt = _read_store(store, kind)
            g.extend([gi] * len(idx))
            s.extend([kind] * len(idx))
            ix.extend(idx)
            c.extend(cnt)
        if msg.zeroCount != 0.0:
            g.append(gi)
            s.append(ZERO)
            ix.append(0)
            c.append(msg.zeroCount)
    bad = [x for x in c if not (x > 0.0 and math.isfinite(x))]
    if bad:
        raise SerializationError(f"sketch bin counts must be positive and finite, got {bad[0]}")
    return _reduce(
        np.array(g, dtype=np.int64),
        np.array(s, dtype=np.int8),
        np.array(ix, dtype=np.int64),
        np.array(c, dtype=np.float64),
    )
