"""The range edges of a percentile or counter plan are read from the finer tiers' whole
windows where they fit, and from raw only for less than the finest tier's window."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.query.functions import cover
from metricsflow.model.tiers import DEFAULT_TIERS

M = 60_000_000_000
FINER = sorted((t for t in DEFAULT_TIERS if t.window_ns), key=lambda t: -t.window_ns)
NOW = 400 * 24 * 60 * M


@given(
    st.integers(NOW - 20 * 24 * 60 * M, NOW),
    st.integers(0, 3 * 24 * 60 * M),
    st.integers(0, 30 * M),
)
def test_pieces_cover_the_range_exactly_with_whole_windows_and_little_raw(
    lo: int, length: int, lag: int
) -> None:
    hi = min(lo + length, NOW)
    pieces = cover(lo, hi, FINER, NOW, lag)
    if lo >= hi:
        assert pieces == []
        return
    assert pieces[0][1] == lo
    assert pieces[-1][2] == hi
    for (_, _, end), (_, start, _) in itertools.pairwise(pieces):
        assert end == start
    for tier, start, end in pieces:
        assert start < end
        if tier is None:  # raw: less than a 1m window at each edge (two when no window fits),
            # or what the worker may not have written yet
            assert end - start < 2 * M or end > NOW - lag - M
        else:
            assert start % tier.window_ns == 0
            assert end % tier.window_ns == 0
            assert end <= NOW - lag
    assert sum(1 for t, _, _ in pieces if t is None) <= 2


def test_a_tier_whose_retention_ended_is_skipped_for_a_finer_one_or_raw() -> None:
    old = NOW - 40 * 24 * 60 * M  # beyond the 1m tier's 30 days, within the 1h tier's year
    pieces = cover(old + 90 * M + 7, old + 200 * M, FINER[1:], NOW, 0)
    assert [(t.name if t else "raw") for t, _, _ in pieces] == ["raw", "1h", "raw"]
