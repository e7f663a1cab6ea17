"""Quantile sketch kernel: our vectorized DDSketch vs DataDog's ``ddsketch`` package, side by side.

    .venv/bin/python bench/bench_sketches.py

Writes ``bench/results/sketches.json`` and prints a table: values inserted per second (a batch
of 200,000 lognormal latencies into 6-value windows), sketches encoded per second and the size
of one ``sketch_<f>`` string for windows of 6, 60 and 600 values.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto

from metricsflow.windows import counters, sketches

RESULTS = Path(__file__).parent / "results" / "sketches.json"
N = 200_000


def best_of(runs: int, fn: Any) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def cascade_shape(values: Any) -> dict[str, float]:
    """Per-point cost of the new kernels on the cascade benchmark's shape: 10 s points, so 6
    per series per 1m window; the 1m tier sketches from values, the 1h tier merges 60 1m
    sketches per row; both encode their rows and compute p50/p90/p95/p99."""
    n = values.shape[0]
    one_m = np.arange(n, dtype=np.int64) // 6

    def sketch_pipeline() -> None:
        fine = sketches.from_values(one_m, values)
        sketches.encode(fine)
        sketches.percentiles(fine)
        coarse = sketches.merge([fine], regroup=np.arange(one_m[-1] + 1, dtype=np.int64) // 60)
        sketches.encode(coarse)
        sketches.percentiles(coarse)

    key = (np.arange(n) // 360).astype(np.int32)  # 1 h of 10 s points per series
    t = (np.arange(n, dtype=np.int64) % 360) * 10_000_000_000
    counter = np.cumsum(values)

    def counter_pipeline() -> None:
        res = counters.window_increases(key, t, counter, 60_000_000_000)
        counters.merge_partials(
            res.key_id, res.start_ns, res.increase, res.resets, 3_600_000_000_000
        )

    sk = best_of(3, sketch_pipeline) / n * 1e6
    co = best_of(3, counter_pipeline) / n * 1e6
    return {
        "sketch_us_per_point": sk,
        "counter_us_per_point": co,
        "added_us_per_point_10pct": 0.1 * sk,
    }


def main() -> None:
    rng = np.random.default_rng(15)
    values = rng.lognormal(-3.0, 1.5, N)
    group = np.arange(N, dtype=np.int64) // 6
    ours = N / best_of(3, lambda: sketches.from_values(group, values))
    n_dd = 20_000

    def datadog() -> None:
        sk = DDSketch(sketches.RELATIVE_ACCURACY)
        for v in values[:n_dd].tolist():
            sk.add(v)

    theirs = n_dd / best_of(3, datadog)
    rows: dict[str, Any] = {
        "insert_values_per_s": {"metricsflow": ours, "ddsketch": theirs, "ratio": ours / theirs},
        "per_window": {},
    }
    for per in (6, 60, 600):
        bins = sketches.from_values(np.arange(N, dtype=np.int64) // per, values)
        _, text = sketches.encode(bins)
        enc = len(text) / best_of(3, lambda b=bins: sketches.encode(b))
        sk = DDSketch(sketches.RELATIVE_ACCURACY)
        for v in values[:per].tolist():
            sk.add(v)
        dd_len = len(DDSketchProto.to_proto(sk).SerializeToString()) * 4 // 3
        rows["per_window"][per] = {
            "encode_sketches_per_s": enc,
            "mean_chars": float(np.mean([len(t) for t in text])),
            "ddsketch_dense_b64_chars_first_window": dd_len,
        }
    rows["cascade_shape"] = cascade_shape(values)
    print(f"{'':34} {'metricsflow':>12} {'ddsketch':>12} {'ratio':>7}")
    ins = rows["insert_values_per_s"]
    print(
        f"{'insert values/s':34} {ins['metricsflow']:12,.0f} {ins['ddsketch']:12,.0f} "
        f"{ins['ratio']:7.1f}"
    )
    for per, r in rows["per_window"].items():
        print(f"{f'window of {per} values: encode/s':34} {r['encode_sketches_per_s']:12,.0f}")
        print(
            f"{f'window of {per} values: chars':34} {r['mean_chars']:12,.0f} "
            f"{r['ddsketch_dense_b64_chars_first_window']:12,.0f}"
        )
    c = rows["cascade_shape"]
    print("cascade shape (6 points per series per 1m window, 60 1m rows per 1h row):")
    print(f"  sketch pipeline per sketched point   {c['sketch_us_per_point']:8.3f} us")
    print(f"  counter kernel per counter point     {c['counter_us_per_point']:8.3f} us")
    print(f"  added per point, 10 % sketched       {c['added_us_per_point_10pct']:8.3f} us")
    RESULTS.parent.mkdir(exist_ok=True)
    rows["machine"] = platform.platform()
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
