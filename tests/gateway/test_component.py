"""The gateway's ``make run`` component: what reaches the gateway process's environment."""

from __future__ import annotations

from metricsflow.infra.gateway import gateway_environment


def test_user_gateway_settings_pass_through_but_make_run_keeps_the_addresses_it_decided() -> None:
    environ = {
        "GATEWAY_TOKENS": "secret",
        "GATEWAY_MAX_BODY_BYTES": "1000",
        "GATEWAY_PORT": "1",
        "GATEWAY_BOOTSTRAP_SERVERS": "elsewhere:9092",
        "GATEWAY_INFLUXDB_URL": "http://elsewhere:8086",
        "HOME": "/root",
    }
    env = gateway_environment(environ, {"kafka": "127.0.0.1:9092", "influxdb": "http://i:8086"})
    assert env == {
        "GATEWAY_TOKENS": "secret",
        "GATEWAY_MAX_BODY_BYTES": "1000",
        "GATEWAY_INFLUXDB_URL": "http://i:8086",
    }


def test_the_query_tiers_follow_the_worker_tiers_unless_set_explicitly() -> None:
    tiers = "raw:7d,1m:30d,1h:365d"
    assert gateway_environment({"METRICSFLOW_TIERS": tiers}, {})["GATEWAY_QUERY_TIERS"] == tiers
    explicit = {"METRICSFLOW_TIERS": tiers, "GATEWAY_QUERY_TIERS": "raw:1d,1m:7d"}
    assert gateway_environment(explicit, {})["GATEWAY_QUERY_TIERS"] == "raw:1d,1m:7d"
