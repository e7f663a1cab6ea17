"""Counter and sketch columns of the tier rows (docs/counters-and-percentiles.md).

The tier window operator (operator.py) keeps a window's rows as chunks (kernels.py). This
module adds, at fire time, the columns of the fields that are counters (``inc``: increase,
``rs``: resets) or sketched (DDSketch bins, :class:`SketchBins` with ``group`` = output row):

* finest tier (raw input): per counter key :func:`counters.window_increases` over the window's
  final samples and the *previous sample* (the key's last sample before the window: from the
  earlier windows still in state, else from the purge frontier, :class:`LastSamples` kept in
  keyed state); per sketched key :func:`sketches.from_values` over the final samples;
* coarser tiers (partial input): increases and resets add up, sketches merge
  (:func:`sketches.merge`), never recomputed from percentiles.

Partial chunks carry the sketch bins of their rows in four extra columns of the same chunk
(``b_g`` row of the chunk, ``b_s`` store, ``b_i`` bucket index, ``b_c`` count: a
``ColumnarChunk`` may hold columns of different lengths), so checkpoints need nothing new.
Which key is what is decided once per key id from its window key (:class:`FieldKindIndex`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from metricsflow.model.escaping import unescape_name
from metricsflow.model.fieldkinds import FieldKinds
from metricsflow.runtime.records import SketchBins, split_window_key
from metricsflow.windows import kernels, sketches
from metricsflow.windows.counters import LastSamples, last_samples, window_increases
from metricsflow.windows.kernels import Chunk, Float64Array, Int32Array, Int64Array, IntpArray
from metricsflow.windows.keys import KeyTuple

Int8Array = npt.NDArray[np.int8]

GAUGE = 0
COUNTER = 1
SKETCHED = 2

BIN_COLUMNS = ("b_g", "b_s", "b_i", "b_c")


def measurement_of(series_key: str) -> str:
    """The measurement of a series key (``m,tag=v,...``; ``\\,`` and ``\\ `` escaped)."""
    if "\\" not in series_key:
        return series_key.split(",", 1)[0]
    i = 0
    n = len(series_key)
    while i < n:
        ch = series_key[i]
        if ch == "\\":
            i += 2
            continue
        if ch == ",":
            break
        i += 1
    return unescape_name(series_key[:i])


class FieldKindIndex:
    """Kind (gauge, counter, sketched) per key id of one key dictionary, computed once per key."""

    def __init__(self, kinds: FieldKinds | None, cache: dict[str, int] | None = None) -> None:
        self.kinds = kinds
        self._cache = {} if cache is None else cache
        """window key -> kind, shared by the tiers of one chain (they see the same keys)"""
        self._keys: tuple[str, ...] = ()
        self._kind: Int8Array = np.zeros(0, np.int8)
        self.any_counter = False
        self.any_sketch = False
        self._pairs: dict[tuple[str, str], int] = {}

    def of(self, keys: tuple[str, ...]) -> Int8Array | None:
        """Kinds of ``keys`` (the operator's dictionary snapshot); ``None`` when no field kinds
        are configured."""
        if self.kinds is None:
            return None
        if keys is self._keys:
            return self._kind
        start = len(self._keys)
        if not (isinstance(keys, KeyTuple) and keys.extends(self._keys) and len(keys) >= start):
            start = 0
        fresh = keys[start:]
        found = list(map(self._cache.get, fresh))  # one C-level pass when all are known
        if None in found:
            found = [
                self._kind_of(k) if x is None else x for k, x in zip(fresh, found, strict=True)
            ]
        new = np.array(found, dtype=np.int8)
        self._kind = new if start == 0 else np.concatenate((self._kind[:start], new))
        self._keys = keys
        self.any_counter = bool((self._kind == COUNTER).any())
        self.any_sketch = bool((self._kind == SKETCHED).any())
        return self._kind

    def _kind_of(self, key: str) -> int:
        kind = self._cache.get(key)
        if kind is not None:
            return kind
        kind = self._compute(key)
        if len(self._cache) >= 1 << 20:
            self._cache.clear()
        self._cache[key] = kind
        return kind

    def _compute(self, key: str) -> int:
        assert self.kinds is not None
        _, series, field_key = split_window_key(key)
        pair = (measurement_of(series), field_key)
        kind = self._pairs.get(pair)
        if kind is None:
            if self.kinds.is_counter(*pair):
                kind = COUNTER
            elif self.kinds.has_sketch(*pair):
                kind = SKETCHED
            else:
                kind = GAUGE
            if len(self._pairs) < 1 << 16:
                self._pairs[pair] = kind
        return kind


# -- bins carried in chunks ------------------------------------------------------------------


def bins_of(chunk: Chunk) -> SketchBins | None:
    if "b_g" not in chunk:
        return None
    return SketchBins(chunk["b_g"].astype(np.int64), chunk["b_s"], chunk["b_i"], chunk["b_c"])


def row_columns(chunk: Chunk) -> Chunk:
    if "b_g" not in chunk:
        return chunk
    return {name: col for name, col in chunk.items() if not name.startswith("b_")}


def with_bins(rows: Chunk, bins: SketchBins | None) -> Chunk:
    if bins is None or bins.size == 0:
        return rows
    return {**rows, "b_g": bins.group, "b_s": bins.store, "b_i": bins.index, "b_c": bins.count}


def select_bins(bins: SketchBins | None, index: IntpArray | None, n_rows: int) -> SketchBins | None:
    """The bins of rows ``index`` (new row ``i`` = old row ``index[i]``) of ``n_rows`` rows."""
    if bins is None or index is None:
        return bins
    inv = np.full(n_rows, -1, dtype=np.int64)
    inv[index] = np.arange(index.shape[0], dtype=np.int64)
    return _regroup(bins, inv)


def _regroup(bins: SketchBins, new_group: Int64Array) -> SketchBins | None:
    g = new_group[bins.group]
    keep = g >= 0
    if not bool(keep.any()):
        return None
    return sketches.merge(
        [SketchBins(g[keep], bins.store[keep], bins.index[keep], bins.count[keep])]
    )


# -- firing ----------------------------------------------------------------------------------


def _out_rows(sorted_k: Int32Array) -> tuple[IntpArray, IntpArray]:
    """(start of each key's run, output row of every row)."""
    starts = kernels.group_starts(sorted_k)
    n = sorted_k.shape[0]
    lengths = np.diff(np.append(starts, n))
    out: IntpArray = np.repeat(np.arange(starts.shape[0], dtype=np.intp), lengths)
    return starts, out


def fire_window(
    chunks: list[Chunk],
    raw: bool,
    unit_ns: int,
    window_ns: int,
    kind: Int8Array | None,
    previous: LastSamples | None,
) -> tuple[Chunk, SketchBins | None]:
    """Deduplicate and reduce the chunks of one window (arrival order), with the counter
    columns ``inc``/``rs`` and the sketch bins of the output rows."""
    bins_in = [bins_of(c) for c in chunks]
    rows_in = [row_columns(c) for c in chunks]
    if not raw and any("inc" in r for r in rows_in):
        rows_in = [_with_counter_columns(r) for r in rows_in]
    if len(rows_in) == 1:
        rows, order = rows_in[0], None
    else:
        cat = kernels.concat(rows_in)
        order = kernels.identity_order(cat["k"], cat["t"], unit_ns)
        rows = kernels.take(cat, order)
    result = kernels.reduce_window(rows, raw)
    if raw:
        return _raw_extras(rows, result, window_ns, kind, previous)
    bins: SketchBins | None = None
    if "inc" in rows or any(b is not None for b in bins_in):
        starts, out = _out_rows(rows["k"])
        if "inc" in rows and rows["k"].shape[0]:
            result["inc"] = np.add.reduceat(rows["inc"], starts)
            result["rs"] = np.add.reduceat(rows["rs"], starts)
        live = [(i, b) for i, b in enumerate(bins_in) if b is not None and b.size]
        if live:
            offsets = np.cumsum([0] + [r["k"].shape[0] for r in rows_in])
            n_cat = int(offsets[-1])
            row_out = np.full(n_cat, -1, dtype=np.int64)
            if order is None:
                row_out[:] = out
            else:
                row_out[order] = out
            shifted = [SketchBins(b.group + offsets[i], b.store, b.index, b.count) for i, b in live]
            cat_bins = shifted[0] if len(shifted) == 1 else _concat_bins(shifted)
            bins = _regroup(cat_bins, row_out)
    return result, bins


def _with_counter_columns(rows: Chunk) -> Chunk:
    if "inc" in rows:
        return rows
    n = rows["k"].shape[0]
    return {**rows, "inc": np.full(n, np.nan), "rs": np.zeros(n, np.int64)}


def _concat_bins(parts: Sequence[SketchBins]) -> SketchBins:
    return SketchBins(
        np.concatenate([p.group for p in parts]),
        np.concatenate([p.store for p in parts]),
        np.concatenate([p.index for p in parts]),
        np.concatenate([p.count for p in parts]),
    )


def _raw_extras(
    rows: Chunk,
    result: Chunk,
    window_ns: int,
    kind: Int8Array | None,
    previous: LastSamples | None,
) -> tuple[Chunk, SketchBins | None]:
    if kind is None or rows["k"].shape[0] == 0:
        return result, None
    k = rows["k"]
    row_kind = kind[k]
    bins: SketchBins | None = None
    counter = row_kind == COUNTER
    sketched = row_kind == SKETCHED
    has_counter = bool(counter.any())
    has_sketch = bool(sketched.any())
    if not (has_counter or has_sketch):
        return result, None
    _, out = _out_rows(k)
    if has_counter:
        ck, ct, cv = k[counter], rows["t"][counter], rows["v"][counter]
        windows = window_increases(ck, ct, cv, window_ns, previous)
        pos = np.searchsorted(result["k"], windows.key_id)
        inc = np.full(result["k"].shape[0], np.nan)
        rs = np.zeros(result["k"].shape[0], np.int64)
        inc[pos] = windows.increase
        rs[pos] = windows.resets
        result["inc"] = inc
        result["rs"] = rs
    if has_sketch:
        bins = sketches.from_values(out[sketched].astype(np.int64), rows["v"][sketched])
    return result, bins


def window_last(chunks: list[Chunk], kind: Int8Array, unit_ns: int) -> LastSamples | None:
    """The last final sample of every counter key in a window's raw chunks."""
    parts: list[Chunk] = []
    for chunk in chunks:
        mask = kind[chunk["k"]] == COUNTER
        if bool(mask.any()):
            parts.append({"k": chunk["k"][mask], "t": chunk["t"][mask], "v": chunk["v"][mask]})
    if not parts:
        return None
    rows = parts[0] if len(parts) == 1 else kernels.dedupe(kernels.concat(parts), unit_ns)
    return last_samples(rows["k"], rows["t"], rows["v"])


def merge_last(a: LastSamples | None, b: LastSamples | None) -> LastSamples | None:
    """Per key, the later of the two samples (``b`` wins a tie: it arrived later)."""
    if a is None or a.key_id.shape[0] == 0:
        return b
    if b is None or b.key_id.shape[0] == 0:
        return a
    k = np.concatenate((a.key_id, b.key_id))
    t = np.concatenate((a.t_ns, b.t_ns))
    v = np.concatenate((a.value, b.value))
    order = np.lexsort((np.arange(k.shape[0]), t, k))  # by key, time, then arrival
    k, t, v = k[order], t[order], v[order]
    return last_samples(k, t, v)


def last_from_chunk(chunk: Chunk | None) -> LastSamples | None:
    if chunk is None:
        return None
    return LastSamples(chunk["k"], chunk["t"], chunk["v"])


def last_to_chunk(last: LastSamples) -> Chunk:
    return {"k": last.key_id, "t": last.t_ns, "v": last.value}


def fire_windows(
    windows: list[tuple[int, list[Chunk]]],
    raw: bool,
    unit_ns: int,
    window_ns: int,
    kind: Int8Array | None,
    previous: LastSamples | None,
    counters: bool,
    kind_at: Callable[[int], Int8Array] | None = None,
) -> tuple[Chunk, SketchBins | None] | None:
    """Fire windows given in ascending order (:func:`fire_window` each; with ``counters``, on
    the raw tier, the counters' previous samples carry from one window to the next): one
    result table, with its window starts in column ``start``, and its sketch bins.
    ``kind_at(window start)``: the kinds of one window when they differ from window to window
    (declared.py); ``kind`` then says which keys' previous samples to carry."""
    results: list[Chunk] = []
    bins: list[SketchBins | None] = []
    for window_end, chunks in windows:
        if not chunks:
            continue
        window_kind = kind if kind_at is None else kind_at(window_end - window_ns)
        result, sketch_bins = fire_window(chunks, raw, unit_ns, window_ns, window_kind, previous)
        if counters and kind is not None:
            previous = merge_last(previous, window_last(chunks, kind, unit_ns))
        result["start"] = np.full(result["k"].shape[0], window_end - window_ns, np.int64)
        results.append(result)
        bins.append(sketch_bins)
    if not results:
        return None
    return concat_results(results, bins)


# -- batches ---------------------------------------------------------------------------------


def concat_results(
    results: list[Chunk], bins: list[SketchBins | None]
) -> tuple[Chunk, SketchBins | None]:
    """One result table (and its bins, rows renumbered) from several windows' results."""
    if any("inc" in r for r in results):
        results = [_with_counter_columns(r) for r in results]
    r = kernels.concat(results)
    live = [(i, b) for i, b in enumerate(bins) if b is not None and b.size]
    if not live:
        return r, None
    if len(results) == 1:
        return r, live[0][1]
    offsets = np.cumsum([0] + [x["k"].shape[0] for x in results])
    return r, _concat_bins(
        [SketchBins(b.group + offsets[i], b.store, b.index, b.count) for i, b in live]
    )


def partial_columns(
    increase: Float64Array | None, resets: Int64Array | None, key_idx: Int32Array
) -> Chunk:
    """The counter columns of an incoming AggregateBatch (nothing when it has none)."""
    if increase is None:
        return {}
    rs = resets if resets is not None else np.zeros(key_idx.shape[0], np.int64)
    return {"inc": increase, "rs": rs}


def late_frontier(
    frontier: LastSamples | None,
    kind: Int8Array,
    key_id: Int32Array,
    t_ns: Int64Array,
    value: Float64Array,
) -> LastSamples | None:
    """The purge frontier after late raw points of purged windows (arrival order), or ``None``
    when no counter's last purged sample changed (a later or equal-time point replaces it)."""
    mask = kind[key_id] == COUNTER
    if not bool(mask.any()):
        return None
    order = kernels.identity_order(key_id[mask], t_ns[mask], 1)
    k, t, v = key_id[mask][order], t_ns[mask][order], value[mask][order]
    last = last_samples(k, t, v)
    if frontier is None or frontier.key_id.shape[0] == 0:
        return last
    order2 = np.argsort(frontier.key_id, kind="stable")
    fk = frontier.key_id[order2]
    pos = np.minimum(np.searchsorted(fk, last.key_id), fk.shape[0] - 1)
    found = fk[pos] == last.key_id
    newer = ~found | (last.t_ns >= frontier.t_ns[order2][pos])
    if not bool(newer.any()):
        return None
    return merge_last(
        frontier, LastSamples(last.key_id[newer], last.t_ns[newer], last.value[newer])
    )
