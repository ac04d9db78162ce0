"""Judged tasks end to end over the real local model, as both the model and the judge.

Its verdicts are poor (a 135M model), but real: what is checked is the plumbing
around them — which calls reach the model (the counting relay's word, not the
gateway's), how they are labelled, and that `scorer score` replays both rounds
with nothing running.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from gateway.report import build_report
from scorer.tasks import BUILTIN_DIR
from tests.scorer_fixtures import (
    StoppableGateway,
    metric_values,
    read_results,
    scorer,
    scorer_run,
    stoppable_gateway,
)
from tests.upstreams import VLLMServer

CHAT = "/v1/chat/completions"
LIMIT = 2


@pytest.fixture
async def stoppable(vllm: VLLMServer, tmp_path: Path) -> AsyncIterator[StoppableGateway]:
    async with stoppable_gateway(vllm, tmp_path) as gateway:
        yield gateway


def small_task(folder: Path, name: str, prompt_suffix: str = "") -> Path:
    """A built-in judged task with short answers (CPU time), optionally with its judge prompt changed."""
    data: dict[str, Any] = yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text())
    data["dataset"]["data_files"]["test"] = str(BUILTIN_DIR / data["dataset"]["data_files"]["test"])
    data["generation_kwargs"]["max_gen_toks"] = 24
    data["judge"]["max_tokens"] = 24
    data["judge"]["prompt"] += prompt_suffix
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def run_judged(gateway: StoppableGateway, tasks: list[Path], run_id: str, *extra: str) -> str:
    tasks_arg = ",".join(str(t) for t in tasks)
    args = [tasks_arg, "--model", "smollm2", "--limit", str(LIMIT), *extra]
    outcome = await scorer_run(gateway, run_id, *args, timeout_s=600)
    assert outcome.code == 0, outcome.stderr[-3000:]
    return outcome.stderr


def labels(gateway: StoppableGateway, run_id: str) -> Counter[str]:
    records = read_records(shard_paths(run_dir(gateway.cache_dir, run_id)), resolve_refs=False)
    return Counter(str(r.get("task")) for r in records)


async def test_judged_tasks_run_end_to_end_and_rescore_identically_with_everything_stopped(
    stoppable: StoppableGateway, tmp_path: Path
) -> None:
    tasks = [small_task(tmp_path / "tasks", "mtbench_mini"), small_task(tmp_path / "tasks", "alpaca_mini")]
    await run_judged(stoppable, tasks, "judged")

    # mtbench: 2 documents x 2 turns, each turn judged once; alpaca: 2 answers, each judged in 2 orders
    assert stoppable.relay.calls[CHAT] == (2 * 2 + 2 * 2) + (2 + 2 * 2)
    assert labels(stoppable, "judged") == {
        "mtbench_mini": 4,
        "mtbench_mini/judge": 4,
        "alpaca_mini": 2,
        "alpaca_mini/judge": 4,
    }
    by_task = {g["name"]: g for g in build_report(stoppable.cache_dir, "judged", "task").as_dict()["groups"]}
    assert by_task["alpaca_mini/judge"]["requests"] == 4 and by_task["alpaca_mini"]["requests"] == 2
    assert by_task["mtbench_mini/judge"]["requests"] == 4

    at_run = read_results(run_dir(stoppable.cache_dir, "judged") / "scorer" / "results.json")
    values = metric_values(at_run)
    mt, alpaca = values["mtbench_mini"], values["alpaca_mini"]
    assert mt["judge_scored,none"] + mt["judge_unscored,none"] == 4  # every turn graded or counted apart
    assert alpaca["judge_scored,none"] + alpaca["judge_unscored,none"] == 2
    judge_usage = at_run["rounds"]["alpaca_mini"]["judge"]
    assert (judge_usage["requests"], judge_usage["upstream_calls"]) == (4, 4)
    assert judge_usage["prompt_tokens"] > 0 and judge_usage["completion_tokens"] > 0
    assert at_run["rounds"]["alpaca_mini"]["generation"]["requests"] == 2

    await stoppable.stop()
    outcome = await scorer(
        "score", "judged", "--cache-dir", str(stoppable.cache_dir), "--json", block_network=True
    )
    assert outcome.code == 0, outcome.stderr
    again = read_results(run_dir(stoppable.cache_dir, "judged") / "scorer" / "results.json")
    assert metric_values(again) == values
    assert again["rounds"] == at_run["rounds"]
    assert "alpaca_mini: generation 2 requests (2 upstream)" in outcome.stderr
    assert "judge 4 requests (4 upstream)" in outcome.stderr


async def test_judge_only_with_a_changed_prompt_sends_one_judge_call_per_answer_and_nothing_else(
    stoppable: StoppableGateway, tmp_path: Path
) -> None:
    first = [small_task(tmp_path / "a", "mtbench_mini"), small_task(tmp_path / "a", "alpaca_mini")]
    await run_judged(stoppable, first, "rejudged")
    before_calls, before_labels = Counter(stoppable.relay.calls), labels(stoppable, "rejudged")

    changed = [
        small_task(tmp_path / "b", "mtbench_mini", "\nBe strict."),
        small_task(tmp_path / "b", "alpaca_mini", "\nBe strict."),
    ]
    stderr = await run_judged(stoppable, changed, "rejudged", "--judge-only")

    sent = Counter(stoppable.relay.calls)
    sent.subtract(before_calls)
    # 4 mtbench answers (2 documents x 2 turns) judged once each; 2 alpaca answers judged in 2 orders
    assert +sent == Counter({CHAT: 4 + 2 * 2})
    new = labels(stoppable, "rejudged")
    new.subtract(before_labels)
    assert +new == Counter({"mtbench_mini/judge": 4, "alpaca_mini/judge": 4})  # no generation request at all
    assert "alpaca_mini/judge: 4" in stderr

    # the manifest now holds the new judge: a re-score replays its verdicts with no call
    await stoppable.stop()
    outcome = await scorer("score", "rejudged", "--cache-dir", str(stoppable.cache_dir), block_network=True)
    assert outcome.code == 0, outcome.stderr
    rows = (run_dir(stoppable.cache_dir, "rejudged") / "scorer" / "judgments_alpaca_mini.jsonl").read_text()
    assert rows.count("Be strict.") == 4


async def test_predict_only_sends_no_judge_call_and_judge_against_compares_two_runs_answers(
    stoppable: StoppableGateway, tmp_path: Path
) -> None:
    task = [small_task(tmp_path / "t", "alpaca_mini")]
    stderr = await run_judged(stoppable, task, "base", "--predict-only")
    assert "judge round not sent for alpaca_mini" in stderr
    await run_judged(stoppable, task, "short", "--predict-only", "--gen-kwargs", "max_gen_toks=12")
    assert labels(stoppable, "base") == {"alpaca_mini": 2} and labels(stoppable, "short") == {
        "alpaca_mini": 2
    }
    before = Counter(stoppable.relay.calls)

    await run_judged(stoppable, task, "short", "--judge-only", "--judge-against", "base")

    sent = Counter(stoppable.relay.calls)
    sent.subtract(before)
    assert +sent == Counter({CHAT: 2 * 2})  # each answer against the base run's, in both orders
    assert labels(stoppable, "short") == {"alpaca_mini": 2, "alpaca_mini/judge": 4}
    await stoppable.stop()
    outcome = await scorer("score", "short", "--cache-dir", str(stoppable.cache_dir), block_network=True)
    assert outcome.code == 0, outcome.stderr
    base_answers = [
        str(r["response"]["choices"][0]["message"]["content"]).strip()
        for r in read_records(shard_paths(run_dir(stoppable.cache_dir, "base")), resolve_refs=True)
    ]
    judgments = run_dir(stoppable.cache_dir, "short") / "scorer" / "judgments_alpaca_mini.jsonl"
    prompts = [json.loads(row)["messages"][-1]["content"] for row in judgments.read_text().splitlines()]
    assert len(prompts) == 4
    assert all(base_answers) and all(
        sum(a in p for p in prompts) >= 2 for a in base_answers
    )  # both orders show it
