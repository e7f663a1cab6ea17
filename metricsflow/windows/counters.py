"""Counter semantics per window, vectorized: ``increase_<f>`` and ``resets_<f>``.

The rule (docs/counters-and-percentiles.md), for one series (key) after last-write-wins, its samples
sorted by time ``(t_0, v_0), (t_1, v_1), ...``:

* every *pair* of consecutive samples ``(t_{i-1}, v_{i-1}) -> (t_i, v_i)`` contributes
  ``delta_i = v_i - v_{i-1}`` if ``v_i >= v_{i-1}``, else ``delta_i = v_i`` (a drop is a reset and
  the value after a reset counts from zero), and ``reset_i = 1`` exactly when ``v_i < v_{i-1}``
  (Prometheus' ``resets()``);
* the pair belongs to the window that contains ``t_i``, the later sample, wherever ``t_{i-1}``
  is (the previous window, or any earlier one across a gap);
* the first sample of a series has no pair: it contributes nothing (increase 0 in its window);
* ``increase_<f>`` of a window is the sum of its pairs' deltas, ``resets_<f>`` their resets.

Every pair belongs to exactly one window, so the windows of a coarser tier, which are unions of
finer ones, have ``increase = sum of the finer increases`` and ``resets = sum of the finer
resets``: :func:`merge_partials` is all a coarser tier needs, exactly.

The rule is a function of the final raw data only: a late point or an overwrite changes the
pairs ``(prev, p)`` and ``(p, next)``, so it changes the window of ``p`` *and* the window of the
next sample after ``p`` (:func:`affected_windows`); a correction of window ``w`` is therefore
a correction of ``w`` and of the window holding the first sample after ``w`` (usually ``w + 1``).

Integer-valued counters below 2**53 (every Prometheus and Telegraf counter in practice) give
float64 increases that are exact; fractional counters are exact up to float rounding of sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from metricsflow.errors import ConfigurationError, StateError
from metricsflow.windows.kernels import Float64Array, Int32Array, Int64Array, group_starts

BoolArray = npt.NDArray[np.bool_]

NO_PREVIOUS_NS = np.iinfo(np.int64).min
"""``prev_t`` of a key that has no sample before the rows given (its first sample ever)."""


@dataclass(frozen=True)
class CounterWindows:
    """One row per (key, window) that has at least one sample, sorted by (key, window start)."""

    key_id: Int32Array
    start_ns: Int64Array
    increase: Float64Array
    resets: Int64Array


@dataclass(frozen=True)
class LastSamples:
    """The last sample of each key: the ``previous sample`` the next rows of the key pair with."""

    key_id: Int32Array
    t_ns: Int64Array
    value: Float64Array


def pair_deltas(
    key_id: Int32Array,
    t_ns: Int64Array,
    value: Float64Array,
    prev_t_ns: Int64Array,
    prev_value: Float64Array,
) -> tuple[Float64Array, BoolArray, BoolArray]:
    """Delta, reset flag and has-a-pair flag of every row.

    Rows are sorted by ``(key, t)`` with one row per identity. ``prev_t_ns``/``prev_value`` give,
    per row, the sample before the first row of its key in the input (``NO_PREVIOUS_NS`` if
    none); only the entries at each key's first row are read.
    """
    n = key_id.shape[0]
    before = np.empty(n, dtype=np.float64)
    has_pair = np.ones(n, dtype=bool)
    if n:
        before[1:] = value[:-1]
        first = np.zeros(n, dtype=bool)
        first[group_starts(key_id)] = True
        before[first] = prev_value[first]
        has_pair[first] = prev_t_ns[first] != NO_PREVIOUS_NS
        paired = first & has_pair
        if bool((prev_t_ns[paired] >= t_ns[paired]).any()):
            bad = int(np.flatnonzero(paired & (prev_t_ns >= t_ns))[0])
            raise StateError(
                f"previous sample at {int(prev_t_ns[bad])} ns is not before the first row of "
                f"key {int(key_id[bad])} at {int(t_ns[bad])} ns"
            )
    reset = has_pair & (value < before)
    delta = np.where(reset, value, value - before)
    delta = np.where(has_pair, delta, 0.0)
    return delta, reset, has_pair


def window_increases(
    key_id: Int32Array,
    t_ns: Int64Array,
    value: Float64Array,
    window_ns: int,
    previous: LastSamples | None = None,
) -> CounterWindows:
    """``increase`` and ``resets`` of every (key, window) the rows touch.

    ``key_id, t_ns, value``: the final samples (last write wins) sorted by ``(key, t)``;
    ``previous``: the last sample of each key *before* these rows (from state), if any. The
    rows of a key must cover whole windows for the result to be that window's full value:
    give every final sample of each window involved.
    """
    if window_ns <= 0:
        raise ConfigurationError(f"window_ns must be positive, got {window_ns}")
    n = key_id.shape[0]
    prev_t = np.full(n, NO_PREVIOUS_NS, dtype=np.int64)
    prev_v = np.zeros(n, dtype=np.float64)
    if previous is not None and n and previous.key_id.shape[0]:
        order = np.argsort(previous.key_id, kind="stable")
        pk = previous.key_id[order]
        pos = np.searchsorted(pk, key_id)
        pos_c = np.minimum(pos, pk.shape[0] - 1)
        found = pk[pos_c] == key_id
        prev_t = np.where(found, previous.t_ns[order][pos_c], NO_PREVIOUS_NS)
        prev_v = np.where(found, previous.value[order][pos_c], 0.0)
    delta, reset, _ = pair_deltas(key_id, t_ns, value, prev_t, prev_v)
    start = (t_ns // window_ns) * window_ns
    if n == 0:
        return CounterWindows(key_id, start, delta, reset.astype(np.int64))
    change = np.empty(n, dtype=bool)
    change[0] = True
    change[1:] = (key_id[1:] != key_id[:-1]) | (start[1:] != start[:-1])
    starts = np.flatnonzero(change)
    return CounterWindows(
        key_id=key_id[starts],
        start_ns=start[starts],
        increase=np.add.reduceat(delta, starts),
        resets=np.add.reduceat(reset.astype(np.int64), starts),
    )


def last_samples(key_id: Int32Array, t_ns: Int64Array, value: Float64Array) -> LastSamples:
    """The last row of each key (rows sorted by ``(key, t)``)."""
    n = key_id.shape[0]
    if n == 0:
        return LastSamples(key_id, t_ns, value)
    ends = np.append(group_starts(key_id)[1:], n) - 1
    return LastSamples(key_id[ends], t_ns[ends], value[ends])


def merge_partials(
    key_id: Int32Array,
    start_ns: Int64Array,
    increase: Float64Array,
    resets: Int64Array,
    window_ns: int,
) -> CounterWindows:
    """Coarser windows from finer ones: sums of increases and resets per (key, coarse window).

    Rows may come in any order; each (key, fine window) must appear once.
    """
    if window_ns <= 0:
        raise ConfigurationError(f"window_ns must be positive, got {window_ns}")
    coarse = (start_ns // window_ns) * window_ns
    order = np.lexsort((start_ns, coarse, key_id))
    k, c = key_id[order], coarse[order]
    n = k.shape[0]
    if n == 0:
        return CounterWindows(k, c, increase[order], resets[order])
    change = np.empty(n, dtype=bool)
    change[0] = True
    change[1:] = (k[1:] != k[:-1]) | (c[1:] != c[:-1])
    starts = np.flatnonzero(change)
    return CounterWindows(
        key_id=k[starts],
        start_ns=c[starts],
        increase=np.add.reduceat(increase[order], starts),
        resets=np.add.reduceat(resets[order], starts),
    )


def affected_windows(
    sorted_t_ns: Int64Array, changed_t_ns: Int64Array, window_ns: int
) -> Int64Array:
    """Starts of the windows of one key whose counter fields a change at ``changed_t_ns`` alters.

    ``sorted_t_ns``: the key's final sample times (after the change, sorted, unique). A point
    written, overwritten or inserted at ``t`` changes the pair that ends at ``t`` (window of
    ``t``) and the pair that starts at ``t`` (window of the next sample after ``t``, if any).
    """
    if window_ns <= 0:
        raise ConfigurationError(f"window_ns must be positive, got {window_ns}")
    nxt = np.searchsorted(sorted_t_ns, changed_t_ns, side="right")
    has_next = nxt < sorted_t_ns.shape[0]
    nxt_t = sorted_t_ns[nxt[has_next]]
    both = np.concatenate((changed_t_ns, nxt_t))
    out: Int64Array = np.unique((both // window_ns) * window_ns)
    return out
