"""The gateway's HTTP routes, one router per concern (see :func:`gateway.app.create_app`).

* :mod:`.write`: the write endpoints (InfluxDB v1 and v2, Prometheus remote write, JSON).
* :mod:`.query`: ``/query``, the tier-aware InfluxQL API of :mod:`gateway.query`.
* :mod:`.ops`: ``/ping``, ``/health``, ``/metrics``.
"""
