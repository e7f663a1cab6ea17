"""The metricsflow gateway: InfluxDB v1/v2, Prometheus remote write and JSON in; Kafka out.

Build the app with :func:`gateway.app.create_app`; run it with ``metricsflow gateway``.
"""
