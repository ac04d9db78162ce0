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

from tests.scorer_fixtures import StoppableGateway, metric_values, scorer_run, stoppable_gateway
from tests.test_lmeval import RUNNER, TASK_DIR, TASKS, offline_env
from tests.upstreams import VLLMServer

pytestmark = pytest.mark.lmeval


@pytest.fixture
async def stoppable(vllm: VLLMServer, tmp_path: Path) -> AsyncIterator[StoppableGateway]:
    async with stoppable_gateway(vllm, tmp_path) as gateway:
        yield gateway


def lmeval_args(mode: str, task_dir: Path = TASK_DIR) -> list[str]:
    """The scorer's flags for the lm-eval tasks in ``task_dir``, matching lm-eval's ``mode``; JSON out."""
    return ["--include-path", str(task_dir), "--model", "smollm2", "--lmeval-mode", mode, "--json"]


# Few-shot variants: 3 examples from a train split (default sampler), 2 from the evaluated split
# itself, and first_n with a description, as lm-eval's MMLU draws them.
FEWSHOT_TASKS = ["replaygate_arith_3shot", "replaygate_capitals_2shot", "replaygate_capitals_first_n"]


async def lm_eval(
    gateway: StoppableGateway,
    run_id: str,
    tmp_path: Path,
    tasks: list[str] = TASKS,
    num_concurrent: int = 8,
    task_dir: Path = TASK_DIR,
) -> dict:  # type: ignore[type-arg]
    """lm-eval's results and samples for ``tasks`` (files in ``task_dir``) run through ``gateway``."""
    out = tmp_path / "lm-eval.json"
    base_url = f"{gateway.url}/runs/{run_id}/v1/completions"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(RUNNER),
        base_url,
        str(task_dir),
        str(out),
        f"--num-concurrent={num_concurrent}",
        *tasks,
        cwd=task_dir,
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

    ours = await scorer_run(stoppable, "parity", ",".join(TASKS), *lmeval_args("concurrent"))

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


@pytest.mark.parametrize(("mode", "num_concurrent"), [("sequential", 1), ("concurrent", 4)])
async def test_after_lm_eval_few_shot_scorer_run_sends_nothing_upstream_and_scores_the_same(
    stoppable: StoppableGateway, tmp_path: Path, mode: str, num_concurrent: int
) -> None:
    run_id = f"fewshot-{mode}"
    theirs = await lm_eval(stoppable, run_id, tmp_path, FEWSHOT_TASKS, num_concurrent)
    calls = Counter(stoppable.relay.calls)
    assert calls["/v1/completions"] > 0

    ours = await scorer_run(stoppable, run_id, ",".join(FEWSHOT_TASKS), *lmeval_args(mode))

    assert ours.code == 0, ours.stderr[-3000:]
    assert Counter(stoppable.relay.calls) == calls, "the scorer reached the upstream: a request differed"
    mine = values_and_stderrs(json.loads(ours.stdout))
    lm = values_and_stderrs(theirs)
    assert "exact_match_stderr,first-number" in mine["replaygate_arith_3shot"]
    for task in FEWSHOT_TASKS:
        assert mine[task] == lm[task], task


def values_and_stderrs(results: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    """Each task's ``metric,filter`` values and their ``metric_stderr,filter``."""
    return {task: {k: v for k, v in e.items() if "," in k} for task, e in results["results"].items()}


async def test_a_group_scores_as_lm_evals_group_with_nothing_sent_upstream(
    stoppable: StoppableGateway, tmp_path: Path
) -> None:
    theirs = await lm_eval(stoppable, "group", tmp_path, ["replaygate_pair"])
    calls = Counter(stoppable.relay.calls)

    ours = await scorer_run(stoppable, "group", "replaygate_pair", *lmeval_args("concurrent"))

    assert ours.code == 0, ours.stderr[-3000:]
    assert Counter(stoppable.relay.calls) == calls, "the scorer reached the upstream: a request differed"
    mine = json.loads(ours.stdout)
    assert set(mine["results"]) == set(theirs["results"])
    for name, entry in theirs["results"].items():
        assert mine["results"][name] == {k: v for k, v in entry.items() if k != "alias"} | {
            "alias": mine["results"][name]["alias"]
        }, name
    assert mine["groups"] == theirs["groups"]
    assert mine["group_subtasks"]["replaygate_pair"] == theirs["group_subtasks"]["replaygate_pair"]
    for key in ("versions", "n-shot", "higher_is_better"):  # n-shot: none, its children differ
        assert mine[key].get("replaygate_pair") == theirs[key].get("replaygate_pair"), key
