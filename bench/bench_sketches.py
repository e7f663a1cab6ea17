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

from metricsflow.windows import sketches

RESULTS = Path(__file__).parent / "results" / "sketches.json"
N = 200_000


def best_of(runs: int, fn: Any) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


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
    RESULTS.parent.mkdir(exist_ok=True)
    rows["machine"] = platform.platform()
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
