"""Parity with lm-evaluation-harness: on the same cached responses, the same metric values.

lm-eval runs first, through the gateway, on local tasks; then `scorer run` evaluates the same task
files under the same run. The scorer builds byte-identical requests, so it sends nothing upstream
(every answer is lm-eval's cached one) and must score exactly what lm-eval scored.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.scorer_fixtures import StoppableGateway, metric_values, scorer, stoppable_gateway
from tests.test_lmeval import RUNNER, TASK_DIR, TASKS, offline_env
from tests.upstreams import VLLMServer

pytestmark = pytest.mark.lmeval


@pytest.fixture
async def stoppable(vllm: VLLMServer, tmp_path: Path) -> AsyncIterator[StoppableGateway]:
    async with stoppable_gateway(vllm, tmp_path) as gateway:
        yield gateway


async def lm_eval(gateway: StoppableGateway, run_id: str, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "lm-eval.json"
    base_url = f"{gateway.url}/runs/{run_id}/v1/completions"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(RUNNER),
        base_url,
        str(TASK_DIR),
        str(out),
        *TASKS,
        cwd=TASK_DIR,
        env=offline_env(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, output.decode(errors="replace")[-4000:]
    return dict(json.loads(out.read_text()))


async def test_scorer_and_lm_eval_score_the_same_cached_responses_identically(
    stoppable: StoppableGateway, tmp_path: Path
) -> None:
    theirs = await lm_eval(stoppable, "parity", tmp_path)
    calls = Counter(stoppable.relay.calls)
    assert calls["/v1/completions"] > 0

    ours = await scorer(
        "run",
        ",".join(TASKS),
        "--include-path",
        str(TASK_DIR),
        "--model",
        "smollm2",
        "--gateway",
        stoppable.url,
        "--run-id",
        "parity",
        "--cache-dir",
        str(stoppable.cache_dir),
        "--json",
    )

    assert ours.code == 0, ours.stderr[-3000:]
    assert stoppable.relay.calls["/v1/completions"] == calls["/v1/completions"], (
        "a request differed from lm-eval's"
    )
    mine = metric_values(json.loads(ours.stdout))
    lm = metric_values(theirs)
    assert set(mine["replaygate_arith"]) == {"exact_match,first-number"}
    assert set(mine["replaygate_capitals"]) == {"acc,none", "acc_norm,none"}
    for task in TASKS:
        assert mine[task] == {k: lm[task][k] for k in mine[task]}, task
