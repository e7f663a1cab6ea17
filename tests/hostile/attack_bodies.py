"""Request bodies the hostile tests build."""

from __future__ import annotations

import time

import cramjam

from gateway.remote_write import WriteRequest


def remote_write_body(labels: dict[str, str], samples: int) -> bytes:
    """A snappy-compressed Prometheus ``WriteRequest``: one series, ``samples`` samples."""
    request = WriteRequest()
    series = request.timeseries.add()
    for name, value in labels.items():
        label = series.labels.add()
        label.name, label.value = name, value
    now_ms = time.time_ns() // 1_000_000
    for _ in range(samples):
        sample = series.samples.add()
        sample.value, sample.timestamp = 1.0, now_ms
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
