"""Counter kernel against an independent, obviously-correct reference (plain Python loops).

The reference never sees the kernel's code: it applies last-write-wins with a dict, sorts each
series, walks consecutive pairs and books each pair's increase in the window of its later sample.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricsflow.errors import ConfigurationError, StateError
from metricsflow.windows import counters, kernels

Write = tuple[int, int, int]  # key, t, value (integer-valued counters: exact in float64)
Expected = dict[tuple[int, int], tuple[float, int]]


def reference(writes: list[Write], window: int) -> Expected:
    final: dict[tuple[int, int], int] = {}
    for key, t, v in writes:  # arrival order: the last write wins
        final[(key, t)] = v
    series: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (key, t), v in final.items():
        series[key].append((t, v))
    out: Expected = {}
    for key, samples in series.items():
        samples.sort()
        for i, (t, v) in enumerate(samples):
            w = t - t % window  # window of the later sample (t >= 0 in these tests)
            inc, resets = out.get((key, w), (0.0, 0))
            if i > 0:
                before = samples[i - 1][1]
                if v < before:
                    inc, resets = inc + v, resets + 1
                else:
                    inc += v - before
            out[(key, w)] = (inc, resets)
    return out


def final_rows(writes: list[Write]) -> kernels.Chunk:
    """The kernel-side pipeline: the engine's own dedupe (last arrival per identity)."""
    chunk = {
        "k": np.array([w[0] for w in writes], dtype=np.int32),
        "t": np.array([w[1] for w in writes], dtype=np.int64),
        "v": np.array([w[2] for w in writes], dtype=np.float64),
    }
    return kernels.dedupe(chunk, 1)


def as_dict(res: counters.CounterWindows) -> Expected:
    return {
        (int(k), int(s)): (float(i), int(r))
        for k, s, i, r in zip(res.key_id, res.start_ns, res.increase, res.resets, strict=True)
    }


# Small time and value ranges so that overwrites, resets at window starts and ends, equal values
# and gaps across empty windows are all frequent.
writes_st = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 400), st.integers(0, 50)), min_size=0, max_size=80
)
window_st = st.sampled_from([1, 7, 10, 60, 100, 1000])


@settings(max_examples=300, deadline=None)
@given(writes=writes_st, window=window_st)
def test_window_increases_equal_reference(writes: list[Write], window: int) -> None:
    rows = final_rows(writes)
    res = counters.window_increases(rows["k"], rows["t"], rows["v"], window)
    assert as_dict(res) == reference(writes, window)


@settings(max_examples=300, deadline=None)
@given(writes=writes_st, fine=st.sampled_from([1, 5, 10]), factor=st.sampled_from([2, 6, 10]))
def test_coarser_tier_is_the_sum_of_finer_partials(
    writes: list[Write], fine: int, factor: int
) -> None:
    rows = final_rows(writes)
    fine_res = counters.window_increases(rows["k"], rows["t"], rows["v"], fine)
    perm = np.random.default_rng(len(writes)).permutation(fine_res.key_id.shape[0])
    coarse = counters.merge_partials(
        fine_res.key_id[perm],
        fine_res.start_ns[perm],
        fine_res.increase[perm],
        fine_res.resets[perm],
        fine * factor,
    )
    assert as_dict(coarse) == reference(writes, fine * factor)
    # and merging twice (1m -> 1h -> 1d) is the same as once
    twice = counters.merge_partials(
        coarse.key_id, coarse.start_ns, coarse.increase, coarse.resets, fine * factor * 3
    )
    assert as_dict(twice) == reference(writes, fine * factor * 3)


@settings(max_examples=300, deadline=None)
@given(writes=writes_st, window=window_st, cut_window=st.integers(0, 40))
def test_windows_in_order_with_the_previous_sample_from_state(
    writes: list[Write], window: int, cut_window: int
) -> None:
    """Firing windows in two steps, carrying the last sample per key, equals one step."""
    rows = final_rows(writes)
    cut = cut_window * window
    early = rows["t"] < cut
    late = ~early
    first = counters.window_increases(rows["k"][early], rows["t"][early], rows["v"][early], window)
    state = counters.last_samples(rows["k"][early], rows["t"][early], rows["v"][early])
    second = counters.window_increases(
        rows["k"][late], rows["t"][late], rows["v"][late], window, previous=state
    )
    combined = as_dict(first) | as_dict(second)
    assert len(combined) == first.key_id.shape[0] + second.key_id.shape[0]  # no window twice
    assert combined == reference(writes, window)


@settings(max_examples=300, deadline=None)
@given(
    writes=writes_st,
    late=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 400), st.integers(0, 50)), min_size=1
    ),
    window=window_st,
)
def test_a_late_write_changes_only_the_affected_windows(
    writes: list[Write], late: list[Write], window: int
) -> None:
    """Recomputing only ``affected_windows`` after late points/overwrites gives the full truth."""
    before = reference(writes, window)
    after = reference(writes + late, window)
    rows = final_rows(writes + late)
    patched = dict(before)
    for key in {w[0] for w in late}:
        mine = rows["k"] == key
        t_all = rows["t"][mine]
        changed = np.array([w[1] for w in late if w[0] == key], dtype=np.int64)
        windows = counters.affected_windows(t_all, changed, window)
        # re-derive those windows from the final raw rows (and the sample before each window)
        for w in windows.tolist():
            sel = mine & (rows["t"] >= w) & (rows["t"] < w + window)
            prior = mine & (rows["t"] < w)
            prev = None
            if prior.any():
                last = int(np.flatnonzero(prior)[-1])
                prev = counters.LastSamples(rows["k"][[last]], rows["t"][[last]], rows["v"][[last]])
            res = counters.window_increases(
                rows["k"][sel], rows["t"][sel], rows["v"][sel], window, prev
            )
            patched.update(as_dict(res))
    assert patched == after


def test_resets_at_and_between_window_boundaries() -> None:
    # window 10: samples 5@t8, 7@t9 | 2@t10 (reset exactly at the boundary) 4@t15 1@t19 (reset
    # inside) | 3@t30 (across an empty window: the pair 1->3 belongs to [30, 40))
    t = np.array([8, 9, 10, 15, 19, 30], dtype=np.int64)
    v = np.array([5, 7, 2, 4, 1, 3], dtype=np.float64)
    k = np.zeros(6, dtype=np.int32)
    res = counters.window_increases(k, t, v, 10)
    assert as_dict(res) == {(0, 0): (2.0, 0), (0, 10): (2.0 + 2.0 + 1.0, 2), (0, 30): (2.0, 0)}


def test_bad_arguments_are_named() -> None:
    empty_i = np.zeros(0, dtype=np.int64)
    with pytest.raises(ConfigurationError, match="window_ns must be positive, got 0"):
        counters.window_increases(np.zeros(0, dtype=np.int32), empty_i, np.zeros(0), 0)
    prev = counters.LastSamples(
        np.zeros(1, dtype=np.int32), np.array([50], dtype=np.int64), np.ones(1)
    )
    with pytest.raises(StateError, match="previous sample at 50 ns"):
        counters.window_increases(
            np.zeros(1, dtype=np.int32), np.array([40], dtype=np.int64), np.ones(1), 10, prev
        )
