"""Kinds declared in the log (remote-write metadata, windows/declared.py), through the cascade:
a measurement that no pattern calls a counter becomes one at the first window that had not
fired when its declaration was read; every finer window from there on, and every coarser window
that starts there or later, carries ``increase_``/``resets_`` equal to a plain-loop reference over
the whole history; windows before it and coarser windows straddling it carry none; a declared
gauge turns a ``*_total`` back into a gauge; the switch survives a checkpoint and restore."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsflow.model.declarations import DeclaredKind, KindDeclarations
from metricsflow.model.fieldkinds import FieldKinds, FieldSelector
from metricsflow.runtime.records import KindChange, RecordBatch, Watermark
from metricsflow.windows import TierSpec, build_cascade
from metricsflow.windows.declared import DeclaredKinds, effective_window_start
from tests.windows.test_tier_counters_sketches import final_rows, reference_counters

S = 1_000_000_000
PLAIN = "db\x00app_requests,host=a\x00value"  # a counter only metadata can tell
TOTAL = "db\x00jobs_total,host=a\x00value"  # counter by name, declared a gauge
OTHER_DB = "other\x00app_requests,host=a\x00value"  # same measurement, another database
KEYS = (PLAIN, TOTAL, OTHER_DB)
TIERS = (
    TierSpec("raw", "0s", "1d"),
    TierSpec("10s", "10s", "30d"),
    TierSpec("1m", "1m", "52w"),
)
KINDS = FieldKinds(counters=FieldSelector.parse("*_total/*"), sketches=FieldSelector.parse(""))
BOUND = 5 * S
LATENESS = 15 * S
DECLARE = KindDeclarations(
    "db", {"app_requests": DeclaredKind.COUNTER, "jobs_total": DeclaredKind.GAUGE}
)


def batch(
    part: list[tuple[int, int, int]], watermark: int | None, changes: tuple[KindChange, ...] = ()
) -> RecordBatch:
    """A batch with its row watermarks, as the watermark assigner sets them."""
    ts = np.array([t * S for _, t, _ in part], dtype=np.int64)
    rows = np.maximum(
        np.maximum.accumulate(ts) - BOUND, -(2**63) if watermark is None else watermark
    )
    return RecordBatch(
        0,
        KEYS,
        np.array([k for k, _, _ in part], dtype=np.int32),
        ts,
        np.array([float(v) for _, _, v in part]),
        row_watermark_ns=rows,
        kind_changes=changes,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 9)), min_size=20, max_size=90),
    declare_at=st.integers(0, 60),
    size=st.integers(1, 7),
    restore_at=st.integers(0, 30),
    backend=st.sampled_from(["heap", "rocksdb"]),
)
def test_a_declared_counter_is_exact_from_its_switch_window_at_every_tier(
    steps: list[tuple[int, int]],
    declare_at: int,
    size: int,
    restore_at: int,
    backend: str,
    tmp_path_factory: Any,
) -> None:
    from metricsflow.checkpointing.storage import FsCheckpointStorage
    from tests.windows.conftest import Chain, _backends

    # every series: a sample every 1-4 s, values that sometimes drop (resets)
    writes: list[tuple[int, int, int]] = []
    t = 0
    for gap, v in steps:
        t += gap
        for k in range(len(KEYS)):
            writes.append((k, t, v * (k + 1)))
    declare_at = min(declare_at, len(writes) // size)
    storage = FsCheckpointStorage(str(tmp_path_factory.mktemp("ckpt")))
    make_backend = next(_backends(backend, tmp_path_factory.mktemp("state")))

    def new_chain(restore: Any = None) -> Chain:
        ops = build_cascade(TIERS, LATENESS, field_kinds=KINDS)
        return Chain(ops, [make_backend(o.uid) for o in ops], storage, frozenset({0}), restore)

    chain = new_chain()
    taps: list[list[Any]] = []
    watermark = None
    effective = None
    for n, i in enumerate(range(0, len(writes), size)):
        part = writes[i : i + size]
        if n == declare_at:
            # the declaration comes after the first row of this batch in the log
            row_wm = max(watermark or -(2**63), part[0][1] * S - BOUND)
            effective = effective_window_start(watermark, row_wm, TIERS[1].window_ns, LATENESS)
            chain.push(batch(part, watermark, (KindChange(1, DECLARE),)))
        else:
            chain.push(batch(part, watermark))
        watermark = max(w for _, w, _ in writes[: i + size]) * S - BOUND
        chain.watermark(Watermark(0, watermark))
        if n == restore_at:
            snapshot = chain.checkpoint(n + 1)
            taps.append(chain.taps)
            chain = new_chain(snapshot)
    chain.finish()
    taps.append(chain.taps)
    if effective is None:  # the stream ended before the declaration
        return

    final = {(KEYS[k], t * S): float(v) for k, t, v in writes}
    for level, tier in enumerate(TIERS[1:]):
        got: dict[tuple[str, int], tuple[Any, ...]] = {}
        for chain_taps in taps:
            got.update(final_rows(chain_taps[level]))
        ref = reference_counters(
            {kt: v for kt, v in final.items() if kt[0] == PLAIN}, tier.window_ns
        )
        switch = -(-effective // tier.window_ns) * tier.window_ns  # first window wholly after
        for (key, start), (inc, resets, _) in got.items():
            missing = inc is None or math.isnan(inc)
            if key == PLAIN and start >= switch:
                assert not missing, (tier.name, start)
                assert (inc, resets) == ref[(key, start)], (tier.name, start)
            elif key == PLAIN:  # before the switch: none, or (coarser, no gauge part) exact
                assert missing or (inc, resets) == ref[(key, start)], (tier.name, start)
                assert missing or tier.window_ns > TIERS[1].window_ns, (tier.name, start)
            elif (key == TOTAL and start >= switch) or key == OTHER_DB:
                # jobs_total is declared a gauge; the declaration names database "db" only
                assert missing, (key, tier.name, start)


def test_a_repeated_declaration_changes_nothing_and_a_flip_in_the_same_window_replaces_it() -> None:
    kinds = DeclaredKinds()
    counter = KindDeclarations("db", {"m": DeclaredKind.COUNTER})
    gauge = KindDeclarations("db", {"m": DeclaredKind.GAUGE})
    assert kinds.declare(counter, 100) == 1
    assert kinds.declare(counter, 200) == 0
    assert kinds.transitions == {("db", "m"): [(100, 1)]}
    assert kinds.declare(gauge, 100) == 1  # same window: replaces, back to no transition
    assert kinds.transitions == {("db", "m"): [(100, 0)]}
    assert kinds.declare(counter, 300) == 1
    assert kinds.transitions == {("db", "m"): [(100, 0), (300, 1)]}
    restored = DeclaredKinds.from_state(kinds.to_state())
    assert restored.transitions == kinds.transitions


def test_kinds_at_a_window_follow_the_transitions_of_the_key_measurement() -> None:
    keys = ("db\x00m,host=a\x00value", "db\x00n\x00value", "db\x00m_total\x00value")
    base = np.array([0, 0, 1], dtype=np.int8)
    kinds = DeclaredKinds()
    kinds.declare(
        KindDeclarations("db", {"m": DeclaredKind.COUNTER, "m_total": DeclaredKind.GAUGE}), 60
    )
    assert kinds.at(keys, base, 0).tolist() == [0, 0, 1]
    assert kinds.at(keys, base, 60).tolist() == [1, 0, 0]
    assert kinds.ever(keys, base).tolist() == [1, 0, 1]


def test_the_effective_window_is_unfired_and_follows_a_window_still_in_state() -> None:
    assert effective_window_start(None, None, 10, 0) == -(2**63)
    assert effective_window_start(25, None, 10, 30) == 20  # window 10 is still in state
    assert effective_window_start(25, 47, 10, 30) == 40
    assert effective_window_start(-5, None, 10, 30) == -10
    assert effective_window_start(25, None, 10, 2) == 30  # window 10 is purged: one more
    assert effective_window_start(29, None, 10, 10) == 20
