"""``CheckpointCoordinator`` against a reference model, over random runs (hypothesis).

A run is a random config and a random sequence of: trigger a checkpoint, let every task
acknowledge a pending one, let a task decline a pending one (any reason), move the clock,
expire overdue checkpoints. A few lines of model say what must happen (Flink's rules as the
coordinator's docstring states them); after every step the coordinator must agree on the
pending ids, the retained ids, the consecutive-failure count and how often the job was failed;
at the end the storage holds exactly the retained checkpoints' directories.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from metricsflow.checkpointing.base import CheckpointFailureReason
from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.coordinator import UNCOUNTED_FAILURES, CheckpointFailedError
from metricsflow.checkpointing.metadata import checkpoint_dir
from tests.checkpointing.coordinator_doubles import MS, WAIT_S, Setup, acknowledge_all

configs = st.builds(
    CheckpointConfig,
    interval_ms=st.just(0),
    timeout_ms=st.integers(1, 100),
    min_pause_between_checkpoints_ms=st.integers(0, 50),
    max_concurrent_checkpoints=st.integers(1, 3),
    tolerable_failed_checkpoints=st.integers(-1, 3),
    num_retained=st.integers(1, 3),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("trigger")),
        st.tuples(st.just("ack"), st.integers(0, 2)),
        st.tuples(st.just("decline"), st.integers(0, 2), st.sampled_from(CheckpointFailureReason)),
        st.tuples(st.just("advance"), st.integers(0, 120)),
        st.tuples(st.just("expire")),
    ),
    max_size=25,
)


@dataclass
class Model:
    config: CheckpointConfig
    now_ns: int
    next_id: int = 1
    pending: dict[int, int] = field(default_factory=dict)  # id -> trigger time
    retained: list[int] = field(default_factory=list)
    last_completion_ns: int | None = None
    consecutive: int = 0
    job_failures: int = 0

    def trigger(self) -> int | None:
        if len(self.pending) >= self.config.max_concurrent_checkpoints:
            return None
        last = self.last_completion_ns
        if last is not None and self.now_ns - last < self.config.min_pause_ns:
            return None
        checkpoint_id, self.next_id = self.next_id, self.next_id + 1
        self.pending[checkpoint_id] = self.now_ns
        return checkpoint_id

    def complete(self, checkpoint_id: int) -> None:
        del self.pending[checkpoint_id]
        self.retained = [*self.retained, checkpoint_id][-self.config.num_retained :]
        self.last_completion_ns = self.now_ns
        self.consecutive = 0
        for older in [i for i in self.pending if i < checkpoint_id]:
            del self.pending[older]  # subsumed: not counted

    def fail(self, checkpoint_id: int, reason: CheckpointFailureReason) -> None:
        del self.pending[checkpoint_id]
        if reason in UNCOUNTED_FAILURES:
            return
        self.consecutive += 1
        tolerable = self.config.tolerable_failed_checkpoints
        if tolerable >= 0 and self.consecutive > tolerable:
            self.job_failures += 1

    def overdue(self) -> list[int]:
        timeout = self.config.timeout_ns
        return [i for i, t in sorted(self.pending.items()) if self.now_ns - t > timeout]


async def run(root: Path, config: CheckpointConfig, plan: list[tuple[object, ...]]) -> None:
    s = Setup(root, config)
    model = Model(config, s.clock.now_ns())
    futures = {}
    for step in plan:
        kind = step[0]
        if kind == "trigger":
            expected = model.trigger()
            future = s.trigger()
            if expected is None:
                error = await asyncio.wait_for(
                    asyncio.gather(future, return_exceptions=True), WAIT_S
                )
                assert isinstance(error[0], CheckpointFailedError), step
            else:
                barrier = await s.participants.barrier(len(s.participants.barriers) + 1)
                assert barrier.checkpoint_id == expected
                futures[expected] = future
        elif kind in ("ack", "decline") and model.pending:
            index = int(step[1]) % len(model.pending)  # type: ignore[call-overload]
            checkpoint_id = sorted(model.pending)[index]
            if kind == "ack":
                model.complete(checkpoint_id)
                acknowledge_all(s.coordinator, checkpoint_id)
                completed = await asyncio.wait_for(futures[checkpoint_id], WAIT_S)
                assert completed.checkpoint_id == checkpoint_id
            else:
                reason = step[2]
                assert isinstance(reason, CheckpointFailureReason)
                model.fail(checkpoint_id, reason)
                s.coordinator.decline_checkpoint("sink", checkpoint_id, reason)
        elif kind == "advance":
            delta = int(step[1]) * MS  # type: ignore[call-overload]
            model.now_ns += delta
            s.clock.advance(delta)
        elif kind == "expire":
            for checkpoint_id in model.overdue():
                model.fail(checkpoint_id, CheckpointFailureReason.CHECKPOINT_EXPIRED)
            s.coordinator.expire_overdue()
        assert sorted(s.coordinator.pending_checkpoints) == sorted(model.pending), step
        assert [c.checkpoint_id for c in s.coordinator.completed_checkpoints] == model.retained
        assert s.coordinator.consecutive_failures == model.consecutive, step
        assert len(s.participants.failures) == model.job_failures, step
    await s.coordinator.stop_triggering()
    # every checkpoint that ended resolves its caller; the pending ones do not
    ended = [f for i, f in futures.items() if i not in model.pending]
    await asyncio.wait_for(asyncio.gather(*ended, return_exceptions=True), WAIT_S)
    assert not any(futures[i].done() for i in model.pending)
    await s.coordinator.shutdown()
    on_disk = sorted(n for n in s.storage.list_dir("") if n.startswith("chk-"))
    assert on_disk == sorted(checkpoint_dir(i) for i in model.retained)


@settings(max_examples=60, deadline=None)
@given(config=configs, plan=steps)
def test_the_coordinator_agrees_with_a_model_of_the_protocol_over_random_runs(
    config: CheckpointConfig, plan: list[tuple[object, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as root:
        asyncio.run(run(Path(root), config, plan))
