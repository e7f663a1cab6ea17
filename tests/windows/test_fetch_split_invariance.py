"""Lateness does not depend on fetch boundaries (docs/windows.md, "Lateness").

The same per-partition log, cut into fetch batches in different random places (and, in one of
the runs, crashed and restored from a checkpoint in the middle), must give identical tier rows
and identical late points: each row is judged against the watermark as of its own position in
the log. Runs the project's own job (watermark assigner + cascade) through the test kit
(:mod:`metricsflow.testing`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsflow.model.tiers import TierSpec
from metricsflow.runtime.records import RecordBatch, window_key
from metricsflow.testing import CRASH, END, CollectedResults, InMemorySource
from metricsflow.testing.harness import JobRunner
from metricsflow.testing.sources import InMemoryElement

S = 1_000_000_000
DAY = 86_400 * S
TIERS = (
    TierSpec("raw", "0s", "1d"),
    TierSpec("10s", "10s", "1d"),
    TierSpec("1m", "1m", "1d"),
    TierSpec("5m", "5m", "1d"),
)
LATENESS = 10 * S  # the harness' bound is 1 minute
T0 = 1_700_000_000 * S
Row = tuple[int, int, float, int]  # key index, ts, value, received


def key(kg: int, i: int) -> str:
    return window_key("db", f"cpu,host=h{kg}-{i}", "usage")


@st.composite
def logs(draw: st.DrawFn) -> dict[int, list[Row]]:
    out: dict[int, list[Row]] = {}
    for kg in range(draw(st.integers(1, 2))):
        clock = T0
        rows: list[Row] = []
        for _ in range(draw(st.integers(1, 60))):
            clock += draw(st.integers(0, 20)) * S
            kind = draw(st.integers(0, 9))
            if kind == 0:  # far in the future: must not move the watermark
                ts = clock + DAY
            elif kind <= 2:  # minutes late: beyond bound + lateness
                ts = clock - draw(st.integers(60, 600)) * S
            else:
                ts = clock - draw(st.integers(0, 70)) * S
            value = float(draw(st.integers(-50, 50)))
            rows.append((draw(st.integers(0, 2)), ts, value, clock))
        if rows and draw(st.booleans()):  # a rewrite of an earlier point
            k, ts, _, _ = rows[draw(st.integers(0, len(rows) - 1))]
            rows.append((k, ts, 99.0, clock))
        out[kg] = rows
    return out


def batches(kg: int, rows: list[Row], cuts: list[int]) -> list[InMemoryElement]:
    keys = tuple(key(kg, i) for i in range(3))
    bounds = sorted({0, len(rows), *(c % (len(rows) + 1) for c in cuts)})
    out: list[InMemoryElement] = []
    for lo, hi in itertools.pairwise(bounds):
        part = rows[lo:hi]
        out.append(
            RecordBatch(
                kg,
                keys,
                np.array([r[0] for r in part], dtype=np.int32),
                np.array([r[1] for r in part], dtype=np.int64),
                np.array([r[2] for r in part], dtype=np.float64),
                received_ns=np.array([r[3] for r in part], dtype=np.int64),
            )
        )
    return out


async def run(
    runner: JobRunner, log: dict[int, list[Row]], cuts: list[int], crash_at: int | None
) -> tuple[dict[str, Any], Counter[Any]]:
    partitions: dict[int, list[InMemoryElement]] = {}
    for kg, rows in log.items():
        elements = batches(kg, rows, cuts)
        # a crash only in a one-partition log: the test kit's source cannot replay a partition
        # that had already ended before the crash (its restored position is past END)
        if crash_at is not None and len(log) == 1:
            elements.insert(crash_at % (len(elements) + 1), CRASH)
        partitions[kg] = [*elements, END]
    results = CollectedResults()
    await runner.run(InMemorySource(partitions), results, tiers=TIERS, allowed_lateness_ns=LATENESS)
    tiers = {t.name: results.tier(t.name) for t in TIERS[1:]}
    late: Counter[Any] = Counter()
    for b in results.side_outputs.get("late", []):
        for i in range(len(b)):
            late[(b.keys[int(b.key_idx[i])], int(b.ts_ns[i]), float(b.values[i]))] += 1
    return tiers, late


def comparable(tiers: dict[str, Any]) -> dict[str, Any]:
    """Rows without the float sum (compared with a tolerance below)."""
    return {
        name: {
            k: (r.count, r.min, r.max, r.first_ts_ns, r.first, r.last_ts_ns, r.last)
            for k, r in rows.items()
        }
        for name, rows in tiers.items()
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    log=logs(),
    cuts_a=st.lists(st.integers(0, 200), max_size=30),
    cuts_b=st.lists(st.integers(0, 200), max_size=30),
    crash_at=st.none() | st.integers(0, 30),
)
async def test_any_split_of_the_same_log_into_fetches_gives_identical_tier_rows(
    runner_factory: Callable[..., JobRunner],
    log: dict[int, list[Row]],
    cuts_a: list[int],
    cuts_b: list[int],
    crash_at: int | None,
) -> None:
    tiers_a, late_a = await run(runner_factory(), log, cuts_a, None)
    tiers_b, late_b = await run(runner_factory(), log, cuts_b, crash_at)
    assert comparable(tiers_a) == comparable(tiers_b)
    for name, rows in tiers_a.items():
        for k, row in rows.items():
            assert abs(row.sum - tiers_b[name][k].sum) <= 1e-9 * max(1.0, abs(row.sum)), k
    assert late_a == late_b


async def test_the_split_from_the_issue_gives_one_answer(
    runner_factory: Callable[..., JobRunner],
) -> None:
    """b@+70s, a@+100s, a@+200s, b@+65s fetched as [b70][a100][a200,b65] and as
    [b70,a100,a200][b65]: b65 is judged at its own position (after a200) both times."""
    base = T0 - T0 % (60 * S)
    a, b = 0, 1
    rows: list[Row] = [
        (b, base + 70 * S, 1.0, base + 70 * S),
        (a, base + 100 * S, 2.0, base + 100 * S),
        (a, base + 200 * S, 3.0, base + 200 * S),
        (b, base + 65 * S, 4.0, base + 200 * S),
    ]
    one = await run(runner_factory(), {0: rows}, [1, 2], None)
    two = await run(runner_factory(), {0: rows}, [3], None)
    assert comparable(one[0]) == comparable(two[0])
    window = one[0]["1m"][(key(0, b), base + 60 * S)]
    assert window.count == 1  # b65 is beyond bound (60 s) + lateness (10 s) at its position
    assert one[1] == two[1] == Counter({(key(0, b), base + 65 * S, 4.0): 1})
