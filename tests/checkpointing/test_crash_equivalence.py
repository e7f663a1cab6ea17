"""Crash equivalence: a job that crashes at random points and restarts from its latest completed
checkpoint ends with exactly the tier results of a run that never crashed.

Exactly-once mode: the final "last version per (tier, key, window)" (what InfluxDB holds after
idempotent overwrites) equals the crash-free run's. At-least-once mode: the sink may receive
elements twice (barriers are not aligned, so records after a barrier can be replayed); we
assert no loss: every raw point reached the sink at least once and every (tier, key, window)
of the crash-free run is present with the same final aggregate (overwrites make duplicates
harmless).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.protocol import CheckpointingMode
from metricsflow.testing import CRASH, CRASH_DURING_CHECKPOINT, CollectedResults, InMemorySource
from metricsflow.testing.harness import JobRunner, metric_batches, with_markers

MODES = [CheckpointingMode.EXACTLY_ONCE, CheckpointingMode.AT_LEAST_ONCE]


async def _reference(runner_factory: Callable[..., JobRunner], seed: int) -> CollectedResults:
    results = CollectedResults()
    source = InMemorySource(metric_batches(seed))
    restarts = await runner_factory("heap").run(source, results)
    assert restarts == 0
    return results


@pytest.mark.parametrize("backend", ["heap", "rocksdb"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
async def test_a_job_crashing_at_random_points_ends_with_the_results_of_a_run_without_crashes(
    runner_factory: Callable[..., JobRunner], backend: str, mode: CheckpointingMode
) -> None:
    seed = 7 if backend == "heap" else 11
    expected = await _reference(runner_factory, seed)
    partitions = with_markers(metric_batches(seed), seed, crashes=4, marker=CRASH)
    partitions = with_markers(
        partitions, seed + 1, crashes=2, marker=CRASH_DURING_CHECKPOINT, first_half=True
    )
    source = InMemorySource(partitions, element_delay_s=0.002)
    results = CollectedResults()
    runner = runner_factory(backend, CheckpointConfig(interval_ms=3, num_retained=2, mode=mode))

    restarts = await runner.run(source, results)

    # every CRASH fired; a CRASH_DURING_CHECKPOINT fires only if a barrier follows it in time
    assert len(source.fired) >= 4
    assert 1 <= restarts <= 6
    assert any(cid > 0 for cid in runner.restored_from), "no restart restored a checkpoint"
    assert set(results.latest) == set(expected.latest)
    assert results.latest == expected.latest
    expected_points = set(expected.raw_points())
    assert set(results.raw_points()) == expected_points  # every point at least once
    if mode is CheckpointingMode.AT_LEAST_ONCE:
        assert len(results.raw_points()) >= len(expected_points)
