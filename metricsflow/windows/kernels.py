"""Vectorized window kernels: no Python work per row (docs/architecture.md, "Micro-batches").

A window's rows are kept as *chunks*: dicts of equal-length 1-D NumPy columns. Column ``k``
is the key id (int32, see the key dictionary in operator.py), ``t`` the identity timestamp
(int64: the point's ``ts_ns`` for raw input, the fine window's start for partial input), and
then either ``v`` (raw input: the value) or the partial aggregate columns ``c s mn mx ft f lt l``
(count, sum, min, max, first_ts, first, last_ts, last).

Every chunk is stored sorted by ``(k, t)`` with one row per identity (the last arrival in the
batch it came from). Firing concatenates a window's chunks in arrival order and runs a stable
sort, which for sorted runs is a merge (timsort), keeps the last arrival per identity and
reduces each key's rows with ``ufunc.reduceat``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]
IntpArray = npt.NDArray[np.intp]
Chunk = dict[str, npt.NDArray[Any]]

PARTIAL_COLUMNS: tuple[str, ...] = ("k", "t", "c", "s", "mn", "mx", "ft", "f", "lt", "l")

_COMPOSITE_LIMIT = 2**62


def window_ends(ts_ns: Int64Array, window_ns: int) -> Int64Array:
    """End (exclusive) of the epoch-aligned tumbling window of each timestamp."""
    out: Int64Array = (ts_ns // window_ns) * window_ns + window_ns
    return out


def identity_order(key_id: Int32Array, ident_ns: Int64Array, unit_ns: int) -> IntpArray:
    """Indices sorting rows by ``(key, identity)``, keeping only the last row of each identity.

    Rows must be given in arrival order; the sort is stable, so among equal identities the last
    index is the last arrival. ``unit_ns`` divides every identity offset (1 for raw points, the
    fine window size for partials): it keeps the composite sort key small.
    """
    n = key_id.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.intp)
    t_min = int(ident_ns.min())
    span = (int(ident_ns.max()) - t_min) // unit_ns + 1
    n_keys = int(key_id.max()) + 1
    if n_keys * span < _COMPOSITE_LIMIT:
        offset = ident_ns - t_min
        if unit_ns != 1:
            offset //= unit_ns
        composite = key_id.astype(np.int64) * span + offset
        order: IntpArray = np.argsort(composite, kind="stable")
        sorted_composite = composite[order]
    else:  # composite would overflow: sort by two keys
        order = np.lexsort((ident_ns, key_id))
        sorted_composite = None
    if n == 1:
        return order
    if sorted_composite is not None:
        differs = sorted_composite[1:] != sorted_composite[:-1]
    else:
        ks, ts = key_id[order], ident_ns[order]
        differs = (ks[1:] != ks[:-1]) | (ts[1:] != ts[:-1])
    if bool(differs.all()):
        return order
    keep = np.empty(n, dtype=bool)
    keep[:-1] = differs
    keep[-1] = True
    kept: IntpArray = order[keep]
    return kept


def take(chunk: Chunk, index: IntpArray | None) -> Chunk:
    return chunk if index is None else {name: col[index] for name, col in chunk.items()}


def concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def dedupe(chunk: Chunk, unit_ns: int) -> Chunk:
    """Sort by ``(k, t)`` and keep the last arrival per identity."""
    order = identity_order(chunk["k"], chunk["t"], unit_ns)
    return take(chunk, order)


def group_starts(sorted_key_id: Int32Array) -> IntpArray:
    """Start index of each run of equal keys in a key-sorted column."""
    n = sorted_key_id.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.intp)
    change = np.flatnonzero(sorted_key_id[1:] != sorted_key_id[:-1]) + 1
    starts: IntpArray = np.concatenate((np.zeros(1, dtype=np.intp), change.astype(np.intp)))
    return starts


def reduce_window(rows: Chunk, raw: bool) -> Chunk:
    """Aggregate one window's deduplicated rows (sorted by ``(k, t)``) per key.

    Returns the columns of an AggregateBatch (without window start): ``k c s mn mx ft f lt l``.
    """
    k = rows["k"]
    n = k.shape[0]
    starts = group_starts(k)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    if n:
        ends[-1] = n - 1
    t = rows["t"]
    if raw:
        v = rows["v"]
        bounds = np.append(starts, n)
        return {
            "k": k[starts],
            "c": np.diff(bounds).astype(np.int64),
            "s": np.add.reduceat(v, starts) if n else v,
            "mn": np.minimum.reduceat(v, starts) if n else v,
            "mx": np.maximum.reduceat(v, starts) if n else v,
            "ft": t[starts],
            "f": v[starts],
            "lt": t[ends],
            "l": v[ends],
        }
    if n == 0:
        return {name: rows[name] for name in PARTIAL_COLUMNS if name != "t"}
    return {
        "k": k[starts],
        "c": np.add.reduceat(rows["c"], starts),
        "s": np.add.reduceat(rows["s"], starts),
        "mn": np.minimum.reduceat(rows["mn"], starts),
        "mx": np.maximum.reduceat(rows["mx"], starts),
        "ft": rows["ft"][starts],
        "f": rows["f"][starts],
        "lt": rows["lt"][ends],
        "l": rows["l"][ends],
    }


def fire(chunks: list[Chunk], raw: bool, unit_ns: int) -> Chunk:
    """Deduplicate and reduce the chunks of one window (given in arrival order)."""
    rows = chunks[0] if len(chunks) == 1 else dedupe(concat(chunks), unit_ns)
    return reduce_window(rows, raw)


def split_by_window(wend: Int64Array) -> Iterator[tuple[int, IntpArray | None]]:
    """(window end, row indices or None for all rows) per distinct window, ascending."""
    lo, hi = int(wend.min()), int(wend.max())
    if lo == hi:
        yield lo, None
        return
    order = np.argsort(wend, kind="stable")
    sorted_ends = wend[order]
    cuts = np.flatnonzero(sorted_ends[1:] != sorted_ends[:-1]) + 1
    for index in np.split(order, cuts):
        yield int(wend[index[0]]), index


def by_window(entries: Iterable[tuple[bytes, Any]]) -> Iterator[tuple[int, list[Chunk]]]:
    """Group scanned ``window-chunks`` entries (keys ``be(window end) + ...``, ascending) by
    window end."""
    current: int | None = None
    chunks: list[Chunk] = []
    for key, entry in entries:
        end = int.from_bytes(key[:8], "big") - 2**63
        if end != current:
            if current is not None:
                yield current, chunks
            current, chunks = end, []
        chunks.append(dict(entry.columns))
    if current is not None:
        yield current, chunks
