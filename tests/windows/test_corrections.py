"""Corrections in the window operators (docs/windows.md, "Corrections"), without InfluxDB:
requests for windows whose state is gone, pending state, results applied and carried up the
cascade, settling, and re-requests after a restore. The InfluxDB side is tested end to end
in tests/truth/."""

from __future__ import annotations

from typing import Any

import numpy as np

from metricsflow.runtime.records import (
    AggregateBatch,
    CorrectionRequest,
    CorrectionResult,
    Watermark,
)
from metricsflow.windows import build_cascade
from metricsflow.windows.corrections import CorrectionMailbox
from tests.windows.test_tier_window_operator import KEY, TIERS, H, M, S, points, rows_of


def result(request: CorrectionRequest, count: int, total: float, seq: int | None = None) -> Any:
    """What the service would answer: one row per requested (key, window)."""
    n = len(request)
    keys = tuple(request.keys[int(k)] for k in request.key_idx)
    starts = request.window_start_ns
    ones = np.ones(n)
    return CorrectionResult(
        key_group=request.key_group,
        tier=request.tier,
        seq=request.seq if seq is None else seq,
        created_ns=request.created_ns,
        batch=AggregateBatch(
            request.key_group,
            request.tier,
            request.window_ns,
            keys,
            np.arange(n, dtype=np.int32),
            starts,
            np.full(n, count, dtype=np.int64),
            np.full(n, total),
            ones,
            ones * total,
            starts,
            ones,
            starts,
            ones * total,
        ),
    )


def make(chain_factory: Any, backend_factory: Any, storage: Any, mailbox: Any, **kw: Any) -> Any:
    ops = build_cascade(TIERS, 0, corrections=mailbox)
    return chain_factory(ops, [backend_factory(o.uid) for o in ops], storage, frozenset({0}), **kw)


def test_a_point_for_a_purged_window_is_requested_and_the_result_is_carried_up(
    chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    mailbox = CorrectionMailbox()
    chain = make(chain_factory, backend_factory, storage, mailbox)
    chain.push(points([(KEY, 10 * S, 1.0)]))
    chain.watermark(Watermark(0, 2 * M))
    chain.push(points([(KEY, 20 * S, 4.0)]))  # window [0, 1m) is purged: beyond lateness
    (request,) = chain.taps[0].requests
    assert (request.tier, request.source_tier, request.window_start_ns.tolist()) == (
        "1m",
        "raw",
        [0],
    )
    assert [request.keys[int(k)] for k in request.key_idx] == [KEY]
    assert chain.operators[0].metrics.late_points == 1
    chain.tick()
    assert rows_of(chain.taps[0].batches()) == [("1m", KEY, 0, 1, 1.0, 1.0, 1.0, 1.0, 1.0)]
    mailbox.put(result(request, 2, 5.0))
    chain.tick()
    assert rows_of(chain.taps[0].batches())[-1] == ("1m", KEY, 0, 2, 5.0, 1.0, 5.0, 1.0, 5.0)
    assert chain.operators[0].metrics.corrected_rows == 1
    chain.tick()  # settled: nothing again
    assert len(chain.taps[0].batches()) == 2
    chain.finish()  # the 1h window was still open: the corrected partial replaced the old one
    assert rows_of(chain.taps[1].batches()) == [("1h", KEY, 0, 2, 5.0, 1.0, 5.0, 1.0, 5.0)]


def test_a_corrected_partial_whose_coarse_window_is_gone_is_requested_from_the_finer_tier(
    chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    mailbox = CorrectionMailbox()
    chain = make(chain_factory, backend_factory, storage, mailbox)
    chain.push(points([(KEY, 10 * S, 1.0)]))
    chain.watermark(Watermark(0, 2 * H))  # 1m and 1h windows fired and purged
    chain.push(points([(KEY, 30 * S, 2.0)]))
    (request,) = chain.taps[0].requests
    mailbox.put(result(request, 2, 3.0))
    chain.tick()
    (coarse,) = chain.taps[1].requests
    assert (coarse.tier, coarse.source_tier, coarse.window_start_ns.tolist()) == ("1h", "1m", [0])
    mailbox.put(result(coarse, 2, 3.0))
    chain.tick()
    assert rows_of(chain.taps[1].batches())[-1] == ("1h", KEY, 0, 2, 3.0, 1.0, 3.0, 1.0, 3.0)


def test_pending_corrections_survive_a_restore_and_an_older_result_does_not_settle_a_newer_one(
    chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    mailbox = CorrectionMailbox()
    chain = make(chain_factory, backend_factory, storage, mailbox)
    chain.push(points([(KEY, 10 * S, 1.0)]))
    chain.watermark(Watermark(0, 2 * M))
    chain.push(points([(KEY, 20 * S, 4.0)]))
    chain.push(points([(KEY, 30 * S, 6.0)]))  # asked again: seq 2
    first, second = chain.taps[0].requests
    assert (first.seq, second.seq) == (1, 2)
    mailbox.put(result(first, 2, 5.0))
    chain.tick()  # emitted, but the entry stays pending (seq 2 is newer)
    handles = chain.checkpoint(checkpoint_id=3)
    mailbox2 = CorrectionMailbox()
    ops = build_cascade(TIERS, 0, corrections=mailbox2)
    resumed = chain_factory(
        ops, [backend_factory(o.uid + "-2") for o in ops], storage, frozenset({0}), restore=handles
    )
    resumed.tick()  # restored pending entries are requested again
    (again,) = resumed.taps[0].requests
    assert (again.seq, again.window_start_ns.tolist()) == (2, [0])
    mailbox2.put(result(again, 3, 11.0))
    resumed.tick()
    handles = resumed.checkpoint(checkpoint_id=4)
    ops = build_cascade(TIERS, 0, corrections=CorrectionMailbox())
    third = chain_factory(
        ops, [backend_factory(o.uid + "-3") for o in ops], storage, frozenset({0}), restore=handles
    )
    third.tick()
    assert third.taps[0].requests == []  # settled
