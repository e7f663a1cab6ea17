"""The runner's job status as a state machine: the allowed changes and nothing else."""

from __future__ import annotations

import itertools

import pytest

from metricsflow.job.runner import (
    JOB_STATUS_TRANSITIONS,
    DownsamplingRunner,
    JobStatus,
    JobStatusTransitionError,
)

ALLOWED = {
    (JobStatus.CREATED, JobStatus.RUNNING),
    (JobStatus.CREATED, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.FINISHED),
    (JobStatus.RUNNING, JobStatus.STOPPED),
    (JobStatus.RUNNING, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.RESTARTING),
    (JobStatus.RESTARTING, JobStatus.RUNNING),
    (JobStatus.RESTARTING, JobStatus.FAILED),
}


class _Machine:
    """Just the state machine of DownsamplingRunner (no Kafka, no sink)."""

    _transition_to = DownsamplingRunner._transition_to
    state = DownsamplingRunner.state

    def __init__(self, state: JobStatus) -> None:
        self._state = state


def test_the_table_is_exactly_the_documented_transitions() -> None:
    table = {(a, b) for a, targets in JOB_STATUS_TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert set(JOB_STATUS_TRANSITIONS) == set(JobStatus)


def test_terminal_states() -> None:
    terminal = {s for s in JobStatus if s.is_terminal}
    assert terminal == {JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.FAILED}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(JobStatus, JobStatus)))
def test_transition_is_allowed_or_refused_with_both_states_named(
    current: JobStatus, target: JobStatus
) -> None:
    machine = _Machine(current)
    if current is target or (current, target) in ALLOWED:
        machine._transition_to(target)
        assert machine.state is target
    else:
        with pytest.raises(JobStatusTransitionError, match=f"{current.value} to {target.value}"):
            machine._transition_to(target)
        assert machine.state is current


def test_status_is_reported_by_name() -> None:
    assert JobStatus.RUNNING == "RUNNING"
    assert f"{JobStatus.RESTARTING}" == "RESTARTING"
