"""metricsflow: a small, real, Flink-like stream engine for downsampling monitoring metrics."""

__version__ = "0.1.0"
