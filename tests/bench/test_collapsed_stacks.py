"""The py-spy profile summary of the worker benchmark (bench/collapsed_stacks.py)."""

from __future__ import annotations

import pytest

from tests.bench.loader import load_bench_module

cs = load_bench_module("bench_collapsed", "collapsed_stacks.py")

PROFILE = """\
<module> (w.py:1);run (job.py:10);decode (col.py:5) 6
<module> (w.py:1);run (job.py:12);fire (win.py:7);decode (col.py:9) 2
<module> (w.py:1);post (sink.py:3) 2
"""


def test_self_and_inclusive_shares() -> None:
    total, by_self, by_incl = cs.summarize(PROFILE)
    assert total == 10
    top = by_self[0]
    assert top.function == "decode (col.py)"  # both lines of decode are one function
    assert (top.self_pct, top.inclusive_pct) == (80.0, 80.0)
    shares = {s.function: s for s in by_incl}
    assert shares["<module> (w.py)"].inclusive_pct == 100.0
    assert shares["run (job.py)"].inclusive_pct == 80.0
    assert shares["run (job.py)"].self_pct == 0.0
    assert shares["fire (win.py)"].inclusive_pct == 20.0


def test_a_recursive_function_counts_once_per_sample() -> None:
    total, _, by_incl = cs.summarize("a (x.py:1);a (x.py:2);a (x.py:3) 4\n")
    assert total == 4
    assert by_incl[0].inclusive_pct == 100.0


def test_a_malformed_line_is_named() -> None:
    with pytest.raises(ValueError, match="line 2"):
        cs.summarize("a (x.py:1) 3\nno count here\n")


def test_empty_profile() -> None:
    assert cs.summarize("") == (0, [], [])
