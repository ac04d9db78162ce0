"""lm-evaluation-harness, unchanged, through the gateway: a rerun is all cache and scores the same.

lm-eval runs in a subprocess with no Hugging Face access (offline, an empty HF home), so its
tokenizer can only come from the gateway's /tokenizer_info and /tokenize at the run root.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from tests.conftest import RunningGateway
from tests.upstreams import CountingRelay

pytestmark = pytest.mark.lmeval

TASK_DIR = Path(__file__).parent / "data" / "lmeval_tasks"
RUNNER = Path(__file__).parent / "lmeval_runner.py"
TASKS = ["replaygate_arith", "replaygate_capitals"]
RUN_ID = "lmeval-run"


def offline_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an lm-eval process that cannot reach, or fall back on, the Hugging Face hub."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "TOKENIZERS_PARALLELISM": "false",
    }


async def run_in_task_dir(command: list[str], env: dict[str, str], timeout_s: float = 240) -> None:
    """Run ``command`` from the task folder (datasets resolves data_files there) without blocking the loop."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=TASK_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, output.decode(errors="replace")[-6000:]


async def assert_tokenizer_is_served(gateway: RunningGateway, run_id: str) -> None:
    """Fail with the gateway's answer if lm-eval's tokenizer probe would fail.

    Without this, lm-eval quietly falls back to a Hugging Face tokenizer and dies on a confusing
    import or download error far from the cause.
    """
    info = await gateway.session.get(f"{gateway.url}/runs/{run_id}/tokenizer_info")
    assert info.status == 200, f"/tokenizer_info: {info.status} {await info.text()}"
    tokens = await gateway.post(f"/runs/{run_id}/tokenize", {"prompt": "test", "add_special_tokens": False})
    assert tokens.status == 200, f"/tokenize: {tokens.status} {await tokens.text()}"


async def evaluate(gateway: RunningGateway, tmp_path: Path, out_name: str) -> dict[str, Any]:
    """Run both tasks through the gateway's run root with lm-eval's Python API; return its results."""
    await assert_tokenizer_is_served(gateway, RUN_ID)
    base_url = f"{gateway.url}/runs/{RUN_ID}/v1/completions"
    out = tmp_path / out_name
    command = [sys.executable, str(RUNNER), base_url, str(TASK_DIR), str(out), *TASKS]
    await run_in_task_dir(command, offline_env(tmp_path))
    return dict(json.loads(out.read_text()))


def run_records(gateway: RunningGateway, run_id: str) -> list[dict[str, Any]]:
    """Every record the gateway kept for ``run_id``."""
    return list(read_records(shard_paths(run_dir(gateway.cache_dir, run_id))))


def scores(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each task's metric values (not its name or alias)."""
    return {
        task: {k: v for k, v in metrics.items() if "," in k and not k.startswith("alias")}
        for task, metrics in results.items()
    }


async def test_lm_eval_rerun_makes_no_upstream_calls_and_scores_identically(
    gateway: RunningGateway, relay: CountingRelay, tmp_path: Path
) -> None:
    first = await evaluate(gateway, tmp_path, "first.json")
    first_calls = Counter(relay.calls)
    between_runs = time.time()
    second = await evaluate(gateway, tmp_path, "second.json")

    assert first_calls["/v1/completions"] > 0
    assert first_calls["/tokenizer_info"] >= 1 and first_calls["/tokenize"] >= 1
    assert relay.calls == first_calls, "the rerun reached the upstream"

    assert set(first["results"]) == set(TASKS)
    assert "exact_match,first-number" in first["results"]["replaygate_arith"]
    assert {"acc,none", "acc_norm,none"} <= set(first["results"]["replaygate_capitals"])
    assert scores(second["results"]) == scores(first["results"])
    assert second["samples"] == first["samples"]

    completions = [r for r in run_records(gateway, RUN_ID) if r["endpoint"] == "/v1/completions"]
    earlier = {r["key"]: r for r in completions if r["ts"] < between_runs}
    rerun = [r for r in completions if r["ts"] >= between_runs]
    assert {r["served"] for r in earlier.values()} == {"miss"}
    assert len(earlier) == first_calls["/v1/completions"]
    assert {r["served"] for r in rerun} == {"hit"}
    assert sorted(r["key"] for r in rerun) == sorted(earlier)
    assert all(r["response"] == earlier[r["key"]]["response"] for r in rerun)
    # One prompt per request (lm-eval's default batch size): 8 generations and 8 x 3 scored choices.
    generated = [r for r in earlier.values() if not r["request"].get("echo")]
    scored = [r for r in earlier.values() if r["request"].get("echo") and r["request"]["max_tokens"] == 1]
    assert (len(generated), len(scored)) == (8, 24)


async def test_the_readme_lm_eval_command_runs_offline_against_a_run_root(
    gateway: RunningGateway, relay: CountingRelay, tmp_path: Path
) -> None:
    await assert_tokenizer_is_served(gateway, "my-run")
    base_url = f"{gateway.url}/runs/my-run/v1/completions"
    out = tmp_path / "cli-out"
    command = [
        str(Path(sys.executable).parent / "lm_eval"),
        "--model",
        "local-completions",
        "--model_args",
        f"model=smollm2,base_url={base_url},num_concurrent=8",
        "--tasks",
        ",".join(TASKS),
        "--include_path",
        ".",
        "--output_path",
        str(out),
    ]
    await run_in_task_dir(command, offline_env(tmp_path))

    (results_file,) = out.rglob("results_*.json")
    assert set(json.loads(results_file.read_text())["results"]) == set(TASKS)
    assert relay.calls["/v1/completions"] == 8 + 24
    records = run_records(gateway, "my-run")
    assert sum(r["endpoint"] == "/v1/completions" for r in records) == 8 + 24
