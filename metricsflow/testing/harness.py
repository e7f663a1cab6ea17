"""A harness for tests of whole jobs: random metric inputs, crash markers, and a runner that
restarts a job from its latest completed checkpoint after every crash (as a worker does)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.recovery import CheckpointRecovery, RestorePlan
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.model.tiers import DEFAULT_TIERS, TierSpec
from metricsflow.runtime.isolation import FailureIsolation
from metricsflow.runtime.job import Job
from metricsflow.runtime.records import RecordBatch, window_key
from metricsflow.runtime.restart import FixedDelayRestartStrategy, run_with_restarts
from metricsflow.state.config import StateBackendConfig
from metricsflow.testing import END, CollectedResults, InMemorySource
from metricsflow.testing.jobs import backend_factory, tier_job_graph
from metricsflow.testing.sources import InMemoryElement, Marker

MINUTE_NS = 60 * 1_000_000_000


def metric_batches(
    seed: int, key_groups: int = 3, batches: int = 24, rows: int = 60
) -> dict[int, list[InMemoryElement]]:
    """Random points per key group: 6 series each, time moving forward ~2 min per batch with
    out-of-order and late rows, and some rewrites of an earlier (series, ts)."""
    rng = random.Random(seed)
    partitions: dict[int, list[InMemoryElement]] = {}
    for kg in range(key_groups):
        keys = tuple(window_key("db", f"cpu,host=h{kg}-{i}", "usage") for i in range(6))
        elements: list[InMemoryElement] = []
        base = 1_700_000_000 * 1_000_000_000
        for b in range(batches):
            ts = [
                base + b * 2 * MINUTE_NS + rng.randrange(-4 * MINUTE_NS, 2 * MINUTE_NS)
                for _ in range(rows)
            ]
            ts = [(t // 1_000_000_000) * 1_000_000_000 for t in ts]
            elements.append(
                RecordBatch(
                    kg,
                    keys,
                    np.array([rng.randrange(len(keys)) for _ in range(rows)], dtype=np.int32),
                    np.array(ts, dtype=np.int64),
                    np.array([float(rng.randrange(1000)) / 8 for _ in range(rows)]),
                )
            )
        elements.append(END)
        partitions[kg] = elements
    return partitions


def with_markers(
    partitions: dict[int, list[InMemoryElement]],
    seed: int,
    crashes: int,
    marker: Marker,
    *,
    first_half: bool = False,
) -> dict[int, list[InMemoryElement]]:
    """Copies of ``partitions`` with ``crashes`` markers at random positions before END
    (in the first half only if asked: a crash-during-checkpoint needs a checkpoint after it)."""
    rng = random.Random(seed)
    result = {kg: list(elements) for kg, elements in partitions.items()}
    for _ in range(crashes):
        kg = rng.choice(sorted(result))
        end = len(result[kg]) // 2 if first_half else len(result[kg]) - 1
        position = rng.randrange(1, end)
        result[kg].insert(position, marker)
    return result


class JobRunner:
    """Runs the metrics job over a source, restarting from checkpoints after each crash."""

    def __init__(self, root: Path, backend: str, config: CheckpointConfig) -> None:
        self.root = root
        self.backend = StateBackendConfig(backend=backend, local_dir=str(root / "local"))  # type: ignore[arg-type]
        self.config = config
        self.storage = FsCheckpointStorage(str(root / "checkpoints"))
        self.restored_from: list[int] = []

    def job_factory(
        self,
        source: InMemorySource,
        results: CollectedResults,
        *,
        tiers: Sequence[TierSpec] = DEFAULT_TIERS,
        allowed_lateness_ns: int = 3 * MINUTE_NS,
        fail_on_value: float | None = None,
        isolation: FailureIsolation | None = None,
    ) -> Callable[[RestorePlan | None], Job]:
        def make(plan: RestorePlan | None) -> Job:
            if plan is not None:
                self.restored_from.append(plan.max_checkpoint_id)
            graph = tier_job_graph(
                source,
                results,
                tiers=tiers,
                allowed_lateness_ns=allowed_lateness_ns,
                max_out_of_orderness_ns=MINUTE_NS,
                fail_on_value=fail_on_value,
            )
            return Job(
                graph,
                storage=self.storage,
                state_backend_factory=backend_factory(self.backend),
                checkpoint_config=self.config,
                restore=plan,
                savepoint_root=str(self.root / "savepoints"),
                isolation=isolation,
            )

        return make

    async def run(self, source: InMemorySource, results: CollectedResults, **kw: object) -> int:
        return await run_with_restarts(
            self.job_factory(source, results, **kw),  # type: ignore[arg-type]
            CheckpointRecovery(self.storage),
            source.key_groups,
            FixedDelayRestartStrategy(max_attempts=100, delay=0.0),
        )
