"""``python -m gateway``: the same as ``metricsflow gateway``."""

from gateway.cli import gateway

gateway()
