"""The deployment files say what the gateway accepts: the shipped configs parse, manifests are valid."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_deploy_config_is_a_valid_gateway_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_BASE", "http://vllm.example:8000/v1")
    config = load_config(DEPLOY / "gateway.yaml")
    local = config.model("local")
    assert local is not None and local.api_base == "http://vllm.example:8000/v1"
    assert local.batching is not None
    hosted = config.model("gpt-4o-mini")
    assert hosted is not None and hosted.provider == "litellm" and hosted.rpm == 500


def test_compose_and_kubernetes_manifests_mount_that_config_and_probe_healthz() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    gateway = compose["services"]["gateway"]
    assert "./gateway.yaml:/etc/replaygate/gateway.yaml:ro" in gateway["volumes"]
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "replaygate.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/replaygate", "/data/store", INDEX}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "/etc/replaygate/gateway.yaml" in dockerfile and "/data/store" in dockerfile


# --- the fleet (issue 14): manifests valid against vendored schemas, SQLite never on shared storage ---

SCHEMAS = Path(__file__).resolve().parent / "data" / "schemas"  # see tests/data/schemas/vendor.py
INDEX = "/data/store/index"  # where a gateway with --cache-dir /data/store keeps its diskcache index
K8S_FILES = ("replaygate.yaml", "redis.yaml", "index-job.yaml")


def _schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def _compose_errors(document: Any) -> list[str]:
    return _schema_errors(json.loads((SCHEMAS / "compose-spec.json").read_text()), document)


def _kubernetes_errors(document: dict[str, Any]) -> list[str]:
    bundle = json.loads((SCHEMAS / "kubernetes-1.37-strict.json").read_text())
    kind = f"{document['apiVersion']} {document['kind']}"
    assert kind in bundle["kinds"], f"no vendored schema for {kind}: add it to tests/data/schemas/vendor.py"
    schema = {**bundle["kinds"][kind], "$defs": bundle["$defs"]}
    return _schema_errors(schema, document)


def _k8s_documents() -> list[dict[str, Any]]:
    return [d for name in K8S_FILES for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in _k8s_documents()
        if "template" in d["spec"]
    ]


def _volume_at(path: str, mounts: list[dict[str, Any]]) -> str:
    """The volume a file at ``path`` lands on: the mount with the longest mountPath that contains it."""
    covering = [
        m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    return max(covering, key=lambda m: len(m["mountPath"]))["name"]


@pytest.mark.parametrize("name", ["compose.yaml", "compose.fleet.yaml"])
def test_compose_files_are_valid_against_the_compose_spec_schema(name: str) -> None:
    assert _compose_errors(yaml.safe_load((DEPLOY / name).read_text())) == []


@pytest.mark.parametrize("name", K8S_FILES)
def test_kubernetes_manifests_are_valid_against_the_strict_kubernetes_schemas(name: str) -> None:
    for document in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
        assert _kubernetes_errors(document) == [], document["kind"]


def test_the_schema_checks_reject_an_unknown_field_and_a_wrong_type() -> None:
    deployment = next(d for d in _k8s_documents() if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # a typo: strict schemas catch it
    assert any("volumeMount" in error for error in _kubernetes_errors(broken))
    compose = yaml.safe_load((DEPLOY / "compose.fleet.yaml").read_text())
    compose["services"]["gateway"]["volume"] = []  # the same typo in a service
    assert any("volume" in error for error in _compose_errors(compose))


def test_the_index_sqlite_is_on_a_pod_local_volume_and_the_records_on_the_shared_one() -> None:
    claims = {
        d["metadata"]["name"]: d["spec"] for d in _k8s_documents() if d["kind"] == "PersistentVolumeClaim"
    }
    for name, pod in _pod_specs():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            if "/data/store" not in {m["mountPath"] for m in container.get("volumeMounts", [])}:
                continue  # not a gateway (redis)
            mounts = container["volumeMounts"]
            index = volumes[_volume_at(INDEX + "/cache.db", mounts)]
            assert "emptyDir" in index or "ephemeral" in index, (
                f"{name}/{container['name']}: SQLite on {index}"
            )
            records = volumes[_volume_at("/data/store/runs/r1/shard.jsonl", mounts)]
            claim = claims[records["persistentVolumeClaim"]["claimName"]]
            assert claim["accessModes"] == ["ReadWriteMany"], f"{name}: replicas share the records"
    header = (DEPLOY / "k8s" / "replaygate.yaml").read_text().split("apiVersion", 1)[0]
    assert "process-safe" not in header and "NEVER on that volume" in header


def test_each_compose_fleet_replica_keeps_its_index_in_a_volume_of_its_own() -> None:
    services = yaml.safe_load((DEPLOY / "compose.fleet.yaml").read_text())["services"]
    for name in ("gateway", "index"):
        volumes = services[name]["volumes"]
        assert INDEX in volumes, f"{name}: an anonymous volume (one per container) at {INDEX}"
        assert "records:/data/store" in volumes
        assert "./gateway.fleet.yaml:/etc/replaygate/gateway.yaml:ro" in volumes


def test_the_fleet_config_shares_state_on_the_redis_the_manifests_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    config = load_config(DEPLOY / "gateway.fleet.yaml")
    assert config.state.backend == "redis" and config.state.url == "redis://redis:6379/0"
    compose = yaml.safe_load((DEPLOY / "compose.fleet.yaml").read_text())["services"]
    assert {"gateway", "vllm", "prometheus"} <= set(compose) and "valkey" in compose["redis"]["image"]
    assert compose["gateway"]["deploy"]["replicas"] == config.state.replicas
    assert compose["gateway"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    prometheus = yaml.safe_load((DEPLOY / "prometheus.fleet.yml").read_text())
    assert prometheus["scrape_configs"][0]["dns_sd_configs"][0]["names"] == ["gateway"]
    documents = _k8s_documents()
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == config.state.replicas
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    redis_service = next(d for d in documents if d["kind"] == "Service" and d["metadata"]["name"] == "redis")
    assert env["REDIS_URL"] == f"redis://redis:{redis_service['spec']['ports'][0]['port']}/0"
