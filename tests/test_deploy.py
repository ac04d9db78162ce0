"""The deployment files say what the gateway accepts: the shipped config parses, manifests are valid YAML."""

from __future__ import annotations

from pathlib import Path

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
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/replaygate", "/data"}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "/etc/replaygate/gateway.yaml" in dockerfile and "/data/store" in dockerfile
