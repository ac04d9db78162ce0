"""`gateway serve` as a user runs it: config file, a launched upstream, real answers, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from gateway.config import ConfigError, load_config
from tests.upstreams import VLLMServer, free_port


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, "gateway exited early"
        assert time.monotonic() < deadline, "gateway not healthy in time"
        time.sleep(0.1)  # polling /healthz: the only readiness signal a server gives


def port_open(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def test_serve_launches_its_upstream_answers_and_stops_both_on_sigterm(
    vllm: VLLMServer, tmp_path: Path
) -> None:
    relay_port, port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
models:
  - name: local
    api_base: http://127.0.0.1:{relay_port}/v1
    upstream_model: smollm2
    launch:
      command: [{sys.executable}, -m, tests.upstreams, {vllm.url}, "{relay_port}"]
      ready_timeout_s: 30
"""
    )
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--cache-dir",
            str(tmp_path / "store"),
        ],
        cwd=os.getcwd(),
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, gateway)
        assert port_open(relay_port)
        body = orjson.dumps(
            {"model": "local", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
        )
        request = urllib.request.Request(url + "/runs/cli/v1/chat/completions", body)
        with urllib.request.urlopen(request, timeout=60) as response:
            assert orjson.loads(response.read())["choices"][0]["message"]["content"]
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        assert not port_open(relay_port)
        assert list((tmp_path / "store" / "runs" / "cli").glob("*.jsonl"))
    finally:
        if gateway.poll() is None:
            gateway.kill()


def test_serve_rejects_a_bad_config_with_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  - name: x\n    provider: openai-compatible\n    api_bass: http://x\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=os.getcwd(),
        timeout=60,
    )
    assert result.returncode != 0
    assert "models.0.api_bass: Extra inputs are not permitted" in result.stderr
    assert "api_bass" in result.stderr


def test_the_embedded_default_launches_local_vllm_from_the_set_up_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REPLAYGATE_HOME", str(tmp_path))
    config = load_config(None)
    (model,) = config.models
    assert model.name == "smollm2" and model.launch is not None
    assert model.launch.command[0] == f"{tmp_path}/vllm-venv/bin/python"
    assert f"{tmp_path}/models/SmolLM2-135M-Instruct" in model.launch.command
    assert config.cache_dir == tmp_path / "store"


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
