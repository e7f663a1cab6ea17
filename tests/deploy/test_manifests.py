"""deploy/: the compose file, Prometheus config and Kubernetes manifests match the code.

Every ``GATEWAY_*`` variable they set is a field of ``GatewaySettings`` or ``QuerySettings``,
every ``METRICSFLOW_*`` one a field of ``WorkerSettings``; ports agree with the settings; the
services the code needs are all there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.query.base import QuerySettings
from gateway.settings import GatewaySettings
from metricsflow.worker.settings import WorkerSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent


def env_names(settings_class: Any, prefix: str) -> set[str]:
    return {prefix + name.upper() for name in settings_class.model_fields}


GATEWAY_ENV = env_names(GatewaySettings, "GATEWAY_") | env_names(QuerySettings, "GATEWAY_")
WORKER_ENV = env_names(WorkerSettings, "METRICSFLOW_")
GATEWAY_PORT = GatewaySettings.model_fields["port"].default
WORKER_PORT = WorkerSettings.model_fields["port"].default


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def k8s_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs = yaml.safe_load_all(path.read_text())
        objects.extend(d for d in docs if d and d.get("kind") != "Kustomization")
    return objects


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


# --- docker compose -------------------------------------------------------------------------


def test_compose_runs_every_component_the_pipeline_needs() -> None:
    services = compose()["services"]
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["influxdb"]["image"].startswith("influxdb:1.8")
    assert {"gateway", "prometheus", "grafana", "kafka-init"} <= set(services)
    workers = [name for name, s in services.items() if s.get("command") == ["worker"]]
    assert len(workers) == 2
    assert services["gateway"]["command"] == ["gateway"]


def test_compose_environment_names_are_settings_the_code_reads() -> None:
    for name, service in compose()["services"].items():
        env = service.get("environment", {})
        if service.get("command") == ["gateway"]:
            assert set(env) <= GATEWAY_ENV, name
            assert env["GATEWAY_INFLUXDB_URL"] == "http://influxdb:8086"
            assert env["GATEWAY_BOOTSTRAP_SERVERS"] == "kafka:9092"
        if service.get("command") == ["worker"]:
            assert set(env) <= WORKER_ENV, (name, sorted(set(env) - WORKER_ENV))
            assert env["METRICSFLOW_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
            assert env["METRICSFLOW_INFLUXDB_URL"] == "http://influxdb:8086"


def test_compose_gateway_and_worker_tiers_agree() -> None:
    services = compose()["services"]
    tiers = services["gateway"]["environment"]["GATEWAY_QUERY_TIERS"]
    assert QuerySettings(query_tiers=tiers).tiers  # parses
    assert services["worker-1"]["environment"]["METRICSFLOW_TIERS"] == tiers


def test_compose_ports_match_the_settings() -> None:
    services = compose()["services"]
    gateway_port = int(services["gateway"]["environment"]["GATEWAY_PORT"])
    assert gateway_port == GATEWAY_PORT
    assert f"{gateway_port}:{gateway_port}" in services["gateway"]["ports"]
    assert int(services["worker-1"]["environment"]["METRICSFLOW_PORT"]) == WORKER_PORT


def test_compose_workers_share_one_checkpoint_volume_and_fit_the_partitions() -> None:
    services = compose()["services"]
    workers = [s for s in services.values() if s.get("command") == ["worker"]]
    dirs = {w["environment"]["METRICSFLOW_CHECKPOINT_DIR"] for w in workers}
    assert len(dirs) == 1
    mounts = [{v.split(":")[0]: v.split(":")[1] for v in w["volumes"]} for w in workers]
    assert all(m["checkpoints"] == "/checkpoints" for m in mounts)
    assert dirs.pop().startswith("/checkpoints/")
    assert len({w["environment"]["METRICSFLOW_WORKER_ID"] for w in workers}) == len(workers)
    command = services["kafka-init"]["command"]
    partitions = int(command[command.index("--partitions") + 1])
    assert len(workers) <= partitions


def test_compose_grafana_mounts_our_provisioning_where_the_provider_reads_it() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/metricsflow.yaml").read_text()
    )
    assert mounts["../grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasources = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/metricsflow.yaml").read_text()
    )["datasources"]
    urls = {d["type"]: d["url"] for d in datasources}
    assert urls["influxdb"] == f"http://gateway:{GATEWAY_PORT}"
    assert urls["prometheus"] == "http://prometheus:9090"


def test_prometheus_scrapes_the_gateway_and_every_worker() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["gateway"] == [f"gateway:{GATEWAY_PORT}"]
    workers = [n for n, s in compose()["services"].items() if s.get("command") == ["worker"]]
    assert sorted(targets["worker"]) == sorted(f"{w}:{WORKER_PORT}" for w in workers)
    mounted = compose()["services"]["prometheus"]["volumes"][0]
    assert mounted.startswith("./prometheus/prometheus.yml:")


def test_the_dockerfile_builds_one_image_for_both_commands() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["metricsflow"]' in text
    assert f"EXPOSE {GATEWAY_PORT} {WORKER_PORT}" in text
    for service in compose()["services"].values():
        if service.get("image") == "metricsflow:latest":
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"


# --- kubernetes -----------------------------------------------------------------------------


def test_every_manifest_is_a_kubernetes_object_listed_in_the_kustomization() -> None:
    for obj in k8s_objects():
        assert {"apiVersion", "kind", "metadata"} <= set(obj)
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"]) | {"kustomization.yaml"}
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")}


def test_the_gateway_is_a_deployment_behind_a_service_scaled_by_an_hpa() -> None:
    deployment = find("Deployment", "gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["gateway"]
    assert container["ports"][0]["containerPort"] == GATEWAY_PORT
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = find("Service", "gateway")
    assert service["spec"]["ports"][0]["port"] == GATEWAY_PORT
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = find("HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_the_workers_share_a_read_write_many_checkpoint_volume() -> None:
    workers = find("StatefulSet", "worker")
    pod = workers["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["worker"]
    assert container["ports"][0]["containerPort"] == WORKER_PORT
    claim = next(v for v in pod["volumes"] if v["name"] == "checkpoints")
    pvc = find("PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "checkpoints")
    config = find("ConfigMap", "metricsflow-worker")["data"]
    assert config["METRICSFLOW_CHECKPOINT_DIR"].startswith(mount["mountPath"] + "/")


@pytest.mark.parametrize(
    ("configmap", "allowed"),
    [("metricsflow-gateway", GATEWAY_ENV), ("metricsflow-worker", WORKER_ENV)],
)
def test_k8s_configuration_names_are_settings_the_code_reads(
    configmap: str, allowed: set[str]
) -> None:
    data = find("ConfigMap", configmap)["data"]
    assert set(data) <= allowed, sorted(set(data) - allowed)
    extra = find("StatefulSet", "worker")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["name"] for e in extra} <= WORKER_ENV


def test_kafka_and_influxdb_are_external_services_the_configuration_names() -> None:
    for name, port in (("kafka", 9092), ("influxdb", 8086)):
        service = find("Service", name)
        assert service["spec"]["type"] == "ExternalName"
        assert service["spec"]["ports"][0]["port"] == port
    gateway = find("ConfigMap", "metricsflow-gateway")["data"]
    worker = find("ConfigMap", "metricsflow-worker")["data"]
    assert gateway["GATEWAY_BOOTSTRAP_SERVERS"] == worker["METRICSFLOW_KAFKA_BOOTSTRAP_SERVERS"]
    assert gateway["GATEWAY_INFLUXDB_URL"] == worker["METRICSFLOW_INFLUXDB_URL"]
    assert gateway["GATEWAY_QUERY_TIERS"] == worker["METRICSFLOW_TIERS"]
    assert int(gateway["GATEWAY_PORT"]) == GATEWAY_PORT
    assert int(worker["METRICSFLOW_PORT"]) == WORKER_PORT
