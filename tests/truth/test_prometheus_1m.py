"""Issue 15 on the 1 m tier: a real Prometheus' counters and histogram against its own
``increase()``/``resets()`` over every whole minute (tests/truth/prometheus.py has the rules and
what differs). Opt-in (``long`` marker, ``make test-long``): it needs minutes of scraping, so
``make test`` runs the same check on the 10 s tier inside the truth suite instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.job.stack import Stack, stack_factory
from tests.truth.prometheus import check_against_prometheus, start_prometheus

__all__ = ["stack_factory"]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]

MINUTE_MS = 60_000


@pytest.mark.timeout(600)
async def test_every_whole_minute_of_the_1m_tier_matches_prometheus_increase_and_resets(
    stack_factory: Callable[..., Any], tmp_path: Path
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    stack.worker("w1", METRICSFLOW_TIERS="raw:7d,10s:7d,1m:7d")
    prom = start_prometheus(stack, tmp_path / "prometheus")
    try:
        # every minute that ended 15 s before Prometheus' last sample, at least two of them
        check_against_prometheus(
            stack,
            prom,
            tier="1m",
            window_ms=MINUTE_MS,
            windows=None,
            settle_ms=15_000,
            min_checked=2 * 3,  # two minutes of most of the four series (ranges may differ)
            lookback="10m",
        )
    finally:
        prom.stop()
