"""Query-time sketch merging (issue 15): what the tier-aware ``/query`` spends on a percentile.

    .venv/bin/python bench/bench_query_sketches.py

The shape of the explorer's p50/p99 panel zoomed to 2 days: ``GROUP BY time(2m)`` answered
from the 1m tier, 10 series merged into one line, so 1,440 intervals of 20 window sketches
(6 lognormal latencies each, written by the worker's encoder). Measures decoding + merging per
sketch and reading p50/p99 per interval (``gateway.query.sketches``), best of 3; writes
``bench/results/query_sketches.json``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from gateway.query.sketches import SketchAccumulator
from metricsflow.windows import sketches

RESULTS = Path(__file__).parent / "results" / "query_sketches.json"
INTERVALS = 1_440
PER_INTERVAL = 20
VALUES_PER_SKETCH = 6


def main() -> None:
    rng = np.random.default_rng(1)
    n = INTERVALS * PER_INTERVAL
    values = rng.lognormal(-3.0, 1.0, n * VALUES_PER_SKETCH)
    group = np.repeat(np.arange(n), VALUES_PER_SKETCH).astype(np.int64)
    _, encoded = sketches.encode(sketches.from_values(group, values))
    merge_s, read_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        accs = [SketchAccumulator() for _ in range(INTERVALS)]
        for i, text in enumerate(encoded):
            accs[i // PER_INTERVAL].add_encoded(text)
        t1 = time.perf_counter()
        for acc in accs:
            acc.percentiles([50, 99])
        t2 = time.perf_counter()
        merge_s.append(t1 - t0)
        read_s.append(t2 - t1)
    result = {
        "sketches": n,
        "intervals": INTERVALS,
        "decode_merge_s": min(merge_s),
        "decode_merge_us_per_sketch": min(merge_s) / n * 1e6,
        "percentiles_s": min(read_s),
        "percentiles_us_per_interval": min(read_s) / INTERVALS * 1e6,
        "python": platform.python_version(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
