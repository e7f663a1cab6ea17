"""Failure isolation: a record no operator can process is dead-lettered once, by position, and
the job goes on with exactly-once results, as if the record had never been in its input; the
verdict survives restarts and crashes, and a failure every record causes is not mistaken for
poison for long."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.recovery import CheckpointRecovery
from metricsflow.runtime.isolation import FailureIsolation, PositionRange
from metricsflow.runtime.records import RecordBatch
from metricsflow.runtime.restart import NoRestartStrategy, run_with_restarts
from metricsflow.testing import CRASH, CollectedResults, InMemorySource
from metricsflow.testing.faults import InjectedFaultError
from metricsflow.testing.harness import JobRunner, metric_batches
from metricsflow.testing.sources import InMemoryElement

POISON = -4242.0
KG = 1
POSITION = 9


def poisoned(
    seed: int,
) -> tuple[dict[int, list[InMemoryElement]], dict[int, list[InMemoryElement]]]:
    """``(with the poison, without it)``: batch ``POSITION`` of key group ``KG`` gets one row
    holding ``POISON``, in the middle (the rows before it reach the windows first)."""
    clean = metric_batches(seed)
    batch = clean[KG][POSITION]
    assert isinstance(batch, RecordBatch)
    values = batch.values.copy()
    values[len(values) // 2] = POISON
    bad = {kg: list(elements) for kg, elements in clean.items()}
    bad[KG][POSITION] = dataclasses.replace(batch, values=values)
    without = {kg: list(elements) for kg, elements in clean.items()}
    del without[KG][POSITION]
    return bad, without


async def reference(
    runner_factory: Callable[..., JobRunner], partitions: dict[int, list[InMemoryElement]]
) -> CollectedResults:
    results = CollectedResults()
    assert await runner_factory().run(InMemorySource(partitions), results) == 0
    return results


async def test_a_record_failing_an_operator_is_dead_lettered_once_and_the_job_goes_on_exactly_once(
    runner_factory: Callable[..., JobRunner], tmp_path: Path
) -> None:
    bad, without = poisoned(seed=3)
    expected = await reference(runner_factory, without)
    source = InMemorySource(bad, element_delay_s=0.001, fetch_size=4)
    isolation = FailureIsolation(tmp_path / "isolation.json")
    runner = runner_factory("heap", CheckpointConfig(interval_ms=5, num_retained=2))
    results = CollectedResults()

    restarts = await runner.run(source, results, fail_on_value=POISON, isolation=isolation)

    assert restarts == 0  # isolation restarts are not the restart strategy's
    assert [(kg, p) for kg, p, _ in source.dead_letters] == [(KG, POSITION)]
    assert "InjectedFaultError: injected fault on value -4242.0" in source.dead_letters[0][2]
    assert isolation.dead_lettered == 1
    assert len(runner.restored_from) == 2  # one to isolate the fetch, one to skip the record
    assert results.latest == expected.latest
    assert set(results.raw_points()) == set(expected.raw_points())


async def test_a_crash_after_the_verdict_replays_without_the_record_nor_a_second_dead_letter(
    runner_factory: Callable[..., JobRunner], tmp_path: Path
) -> None:
    bad, without = poisoned(seed=5)
    expected = await reference(runner_factory, without)
    bad[KG].insert(POSITION + 1, CRASH)
    source = InMemorySource(bad, element_delay_s=0.001, fetch_size=4)
    isolation = FailureIsolation(tmp_path / "isolation.json")
    runner = runner_factory("heap", CheckpointConfig(interval_ms=5, num_retained=2))
    results = CollectedResults()

    restarts = await runner.run(source, results, fail_on_value=POISON, isolation=isolation)

    assert restarts == 1  # the CRASH
    assert source.fired  # the crash happened after the poison was judged
    assert [(kg, p) for kg, p, _ in source.dead_letters] == [(KG, POSITION)]
    assert isolation.skipped >= 2  # skipped by the replay after the verdict and after the crash
    assert results.latest == expected.latest


def test_the_verdicts_survive_the_process_in_their_file(tmp_path: Path) -> None:
    path = tmp_path / "isolation.json"
    first = FailureIsolation(path)
    first.mark_suspect(2, PositionRange(100, 140))
    first.mark_poison(2, 117, "ValueError: boom")
    again = FailureIsolation(path)
    assert again.is_suspect(2, 139)
    assert not again.is_suspect(2, 140)
    assert again.is_poison(2, 117)
    assert not again.is_poison(2, 118)
    assert not again.is_poison(1, 117)
    again.prune(2, 118)
    assert FailureIsolation(path).poison == {}
    assert FailureIsolation(path).suspects == {2: PositionRange(100, 140)}
    path.write_text("{not json")
    assert FailureIsolation(path).poison == {}  # a torn file is ignored, with a warning


async def test_a_failure_every_record_causes_is_not_poison_once_the_budget_is_spent(
    runner_factory: Callable[..., JobRunner], tmp_path: Path
) -> None:
    partitions = metric_batches(seed=8, key_groups=1, batches=12)
    for i, element in enumerate(partitions[0]):
        if isinstance(element, RecordBatch):
            partitions[0][i] = dataclasses.replace(element, values=np.full(len(element), POISON))
    source = InMemorySource(partitions, fetch_size=4)
    isolation = FailureIsolation(max_poison_per_interval=3, interval_s=3600)
    runner = runner_factory()
    factory = runner.job_factory(
        source, CollectedResults(), fail_on_value=POISON, isolation=isolation
    )

    with pytest.raises(InjectedFaultError):
        await run_with_restarts(
            factory, CheckpointRecovery(runner.storage), source.key_groups, NoRestartStrategy()
        )

    assert len(source.dead_letters) == 3
