"""Fixtures for job-level tests (the harness lives in metricsflow.testing.harness)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.testing.harness import JobRunner


@pytest.fixture
def runner_factory(tmp_path: Path) -> Callable[..., JobRunner]:
    counter = iter(range(1000))

    def make(backend: str = "heap", config: CheckpointConfig | None = None) -> JobRunner:
        return JobRunner(
            tmp_path / f"run-{next(counter)}",
            backend,
            config or CheckpointConfig(interval_ms=2, num_retained=2),
        )

    return make
