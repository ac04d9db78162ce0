"""`scorer tasks`, the Hugging Face `datasets` loader on local files, and a chat model's run and re-score."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from scorer.docs import load_docs
from scorer.tasks import BUILTIN_DIR
from tests.scorer_fixtures import StoppableGateway, metric_values, read_results, scorer, stoppable_gateway
from tests.upstreams import VLLMServer

DATA = BUILTIN_DIR / "data"


async def test_tasks_lists_builtin_and_included_tasks_with_sizes_and_metrics(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "task: mine\ndataset: {path: json, data_files: {test: data.jsonl}}\neval_split: test\n"
        'doc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
        "metric_list: [f1, {metric: rouge, rouge_type: rouge1}]\n"
    )
    (tmp_path / "data.jsonl").write_text('{"q": "1", "a": "2"}\n{"q": "3", "a": "4"}\n')

    outcome = await scorer("tasks", "--include-path", str(tmp_path))

    assert outcome.code == 0, outcome.stderr
    rows = {line.split()[0]: line.split(None, 3) for line in outcome.stdout.splitlines()[1:]}
    assert rows["capitals"][1:3] == ["generate_until", "30"]
    assert rows["capitals"][3].strip() == "exact_match"
    assert rows["mine"][1:3] == ["generate_until", "2"]
    assert rows["mine"][3].strip() == "f1, rouge1"
    assert {"mmlu_astronomy", "humaneval"} <= set(rows)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_the_datasets_loader_reads_local_files_as_the_direct_reader_does(tmp_path: Path, fmt: str) -> None:
    rows = [json.loads(line) for line in (DATA / "capitals_test.jsonl").read_text().splitlines()]
    path = tmp_path / f"docs.{fmt}"
    if fmt == "csv":
        keys = list(rows[0])
        path.write_text(
            "\n".join([",".join(keys), *(",".join(str(r[k]) for k in keys) for r in rows)]) + "\n"
        )
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = {"path": fmt, "data_files": {"test": [str(path)]}}

    direct = load_docs(dataset, "test", "test")
    through_datasets = load_docs({**dataset, "loader": "datasets"}, "test", "test")

    assert through_datasets == direct
    assert len(direct) == len(rows) == 30


CHAT_TASK = f"""
task: capitals_chat
dataset:
  path: json
  data_files: {{test: {DATA / "capitals_test.jsonl"}, train: {DATA / "capitals_train.jsonl"}}}
eval_split: test
train_split: train
api: chat
doc_to_text: "What is the capital of {{{{country}}}}? Answer with the city name only."
doc_to_target: "{{{{capital}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 8, temperature: 0}}
filter_list:
  - name: strip
    filter: [{{function: strip}}, {{function: take_first}}]
metric_list:
  - {{metric: exact_match, ignore_case: true, ignore_punctuation: true}}
  - f1
"""


@pytest.fixture
async def stoppable(vllm: VLLMServer, tmp_path: Path) -> AsyncIterator[StoppableGateway]:
    async with stoppable_gateway(vllm, tmp_path) as gateway:
        yield gateway


async def test_a_chat_task_runs_through_chat_completions_and_rescores_with_everything_stopped(
    stoppable: StoppableGateway, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "chat.yaml").write_text(CHAT_TASK)
    common = ["--cache-dir", str(stoppable.cache_dir)]
    ran = await scorer(
        "run", "capitals_chat", "--model", "smollm2", "--limit", "4", "--gateway", stoppable.url,
        "--run-id", "chat", "--include-path", str(tasks), *common,
    )  # fmt: skip
    assert ran.code == 0, ran.stderr[-3000:]
    folder = run_dir(stoppable.cache_dir, "chat")
    endpoints = {r["endpoint"] for r in read_records(shard_paths(folder))}
    assert endpoints == {"/v1/chat/completions"}  # no /tokenize either: chat prompts are text
    at_run = metric_values(read_results(folder / "scorer" / "results.json"))
    assert set(at_run["capitals_chat"]) == {"exact_match,strip", "f1,strip"}
    await stoppable.stop()

    rescored = await scorer("score", "chat", *common, block_network=True)

    assert rescored.code == 0, rescored.stderr
    assert metric_values(read_results(folder / "scorer" / "results.json")) == at_run
    samples = [json.loads(line) for line in (folder / "scorer" / "samples_capitals_chat.jsonl").open()]
    assert len(samples) == 4 and all(isinstance(s["response"][0], str) for s in samples)
