"""`scorer run` through the gateway over the real local model, then `scorer score` from the cache alone."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from tests.scorer_fixtures import (
    StoppableGateway,
    metric_values,
    read_results,
    scorer,
    scorer_run,
    stoppable_gateway,
)
from tests.upstreams import VLLMServer


@pytest.fixture
async def stoppable(vllm: VLLMServer, tmp_path: Path) -> AsyncIterator[StoppableGateway]:
    async with stoppable_gateway(vllm, tmp_path) as gateway:
        yield gateway


DEMO = ["capitals", "--model", "smollm2", "--limit", "6"]


def scorer_dir(gateway: StoppableGateway, run_id: str) -> Path:
    return run_dir(gateway.cache_dir, run_id) / "scorer"


async def run(gateway: StoppableGateway, run_id: str, *extra: str) -> None:
    outcome = await scorer_run(gateway, run_id, *DEMO, *extra)
    assert outcome.code == 0, outcome.stderr[-3000:]


async def score(gateway: StoppableGateway, run_id: str, *extra: str, block: bool = True):  # type: ignore[no-untyped-def]
    return await scorer("score", run_id, "--cache-dir", str(gateway.cache_dir), *extra, block_network=block)


async def test_score_with_gateway_and_upstream_stopped_gives_the_run_numbers(
    stoppable: StoppableGateway,
) -> None:
    await run(stoppable, "r1")
    at_run = read_results(scorer_dir(stoppable, "r1") / "results.json")
    await stoppable.stop()

    outcome = await score(stoppable, "r1")

    assert outcome.code == 0, outcome.stderr
    again = read_results(scorer_dir(stoppable, "r1") / "results.json")
    assert metric_values(again) == metric_values(at_run)
    assert set(metric_values(again)["capitals"]) == {"exact_match,strip", "exact_match,last-name"}
    assert "|capitals|" in outcome.stdout


async def test_score_imports_nothing_that_can_reach_a_model(stoppable: StoppableGateway) -> None:
    await run(stoppable, "r-imports", "--predict-only")
    await stoppable.stop()
    blocked = await score(stoppable, "r-imports")
    assert blocked.code == 0, blocked.stderr
    # The blocker is real: a command that does need the network fails under it.
    refused = await scorer("run", *DEMO, "--gateway", stoppable.url, "--run-id", "x", block_network=True)
    assert refused.code != 0 and "blocked in this test" in refused.stderr


async def test_predict_only_then_score_equals_a_plain_run(stoppable: StoppableGateway) -> None:
    await run(stoppable, "predicted", "--predict-only")
    assert not (scorer_dir(stoppable, "predicted") / "results.json").exists()
    scored = await score(stoppable, "predicted")
    assert scored.code == 0, scored.stderr
    calls = Counter(stoppable.relay.calls)

    await run(stoppable, "plain")

    assert stoppable.relay.calls == calls, "the plain run asked the model again for cached answers"
    predicted = read_results(scorer_dir(stoppable, "predicted") / "results.json")
    plain = read_results(scorer_dir(stoppable, "plain") / "results.json")
    assert metric_values(predicted) == metric_values(plain)


async def test_rescore_with_a_changed_regex_changes_the_numbers_and_calls_nothing(
    stoppable: StoppableGateway,
) -> None:
    await run(stoppable, "regex")
    before = read_results(scorer_dir(stoppable, "regex") / "results.json")
    calls = Counter(stoppable.relay.calls)
    digits_only = json.dumps(
        {
            "filter_list": [
                {"name": "last-name", "filter": [{"function": "regex", "regex_pattern": "([0-9]+)"}]},
            ]
        }
    )

    outcome = await score(stoppable, "regex", "--config", digits_only)

    assert outcome.code == 0, outcome.stderr
    assert stoppable.relay.calls == calls
    rescored = json.loads(next(p for p in scorer_dir(stoppable, "regex").glob("results-*.json")).read_text())
    assert metric_values(before)["capitals"]["exact_match,last-name"] > 0
    assert metric_values(rescored)["capitals"] == {"exact_match,last-name": 0.0}
    # the run's own results stay as they were
    assert read_results(scorer_dir(stoppable, "regex") / "results.json") == before


SELF_SHOT = """
task: capitals_selfshot
dataset:
  path: json
  data_files: {{test: {test}, train: {train}}}
eval_split: test
train_split: train
doc_to_text: "Q: What is the capital of {{{{country}}}}?\\nA:"
doc_to_target: "{{{{capital}}}}"
fewshot: {{num: 2, targets: model}}
generation_kwargs: {{until: ["\\n"], max_gen_toks: 5, temperature: 0}}
"""


async def test_train_and_eval_rounds_send_every_distinct_request_once(
    stoppable: StoppableGateway, tmp_path: Path
) -> None:
    # Duplicated documents make identical prompts: they must share one request.
    rows = [{"country": c, "capital": k} for c, k in [("France", "Paris"), ("Japan", "Tokyo")] * 2]
    train_rows = [
        {"country": c, "capital": k} for c, k in [("Peru", "Lima"), ("Cuba", "Havana"), ("Iran", "Tehran")]
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    task = tmp_path / "selfshot.yaml"
    task.write_text(SELF_SHOT.format(test=tmp_path / "test.jsonl", train=tmp_path / "train.jsonl"))
    args = [
        "run",
        str(task),
        "--model",
        "smollm2",
        "--gateway",
        stoppable.url,
        "--cache-dir",
        str(stoppable.cache_dir),
    ]

    first = await scorer(*args, "--run-id", "rounds")
    assert first.code == 0, first.stderr
    records = list(read_records(shard_paths(run_dir(stoppable.cache_dir, "rounds"))))
    completions = [r for r in records if r["endpoint"] == "/v1/completions"]
    distinct = {r["key"] for r in completions}
    assert stoppable.relay.calls["/v1/completions"] == len(completions) == len(distinct)
    prompts = [r["request"]["prompt"] for r in completions]
    assert len(distinct) <= 3 + 4  # at most every train item, and the eval prompts without repeats
    assert len(prompts) == len({json.dumps(p) for p in prompts})
    manifest = json.loads((scorer_dir(stoppable, "rounds") / "manifest.json").read_text())
    assert manifest["rounds"] == {"train": ["capitals_selfshot"], "eval": ["capitals_selfshot"]}

    calls = Counter(stoppable.relay.calls)
    second = await scorer(*args, "--run-id", "rounds")
    third = await scorer(*args, "--run-id", "rounds-again")
    assert second.code == third.code == 0, second.stderr + third.stderr
    assert stoppable.relay.calls == calls


async def test_mmlu_multiple_choice_rescores_from_the_cache_alone(stoppable: StoppableGateway) -> None:
    args = ["mmlu_astronomy", "--model", "smollm2", "--limit", "2", "--num-fewshot", "1"]
    args += ["--gateway", stoppable.url]
    ran = await scorer("run", *args, "--run-id", "mc", "--cache-dir", str(stoppable.cache_dir))
    assert ran.code == 0, ran.stderr[-3000:]
    at_run = read_results(scorer_dir(stoppable, "mc") / "results.json")
    assert stoppable.relay.calls["/v1/completions"] == 2 * 4  # one echo+logprobs request per choice
    await stoppable.stop()

    outcome = await score(stoppable, "mc")

    assert outcome.code == 0, outcome.stderr
    values = metric_values(read_results(scorer_dir(stoppable, "mc") / "results.json"))
    assert values == metric_values(at_run)
    assert set(values["mmlu_astronomy"]) == {"acc,none"}  # lm-eval's mmlu scores acc only


async def test_run_with_the_gateway_stopped_reads_everything_from_the_cache_and_says_so(
    stoppable: StoppableGateway,
) -> None:
    args = ["capitals", "--model", "smollm2", "--limit", "3", "--gateway", stoppable.url]
    args += ["--run-id", "offline", "--cache-dir", str(stoppable.cache_dir), "--json"]
    first = await scorer("run", *args)
    assert first.code == 0, first.stderr[-3000:]
    await stoppable.stop()

    again = await scorer("run", *args)

    assert again.code == 0, again.stderr[-3000:]
    assert "unreachable" in again.stderr and "sent nothing" in again.stderr
    assert metric_values(json.loads(again.stdout)) == metric_values(json.loads(first.stdout))


async def test_a_cache_miss_with_the_gateway_stopped_is_one_line_counting_the_missing(
    stoppable: StoppableGateway,
) -> None:
    args = ["capitals", "--model", "smollm2", "--gateway", stoppable.url, "--run-id", "offline-miss"]
    args += ["--cache-dir", str(stoppable.cache_dir)]
    first = await scorer("run", *args, "--limit", "2")
    assert first.code == 0, first.stderr[-3000:]
    await stoppable.stop()

    more = await scorer("run", *args, "--limit", "3")  # the third document was never asked

    assert more.code == 1
    lines = more.stderr.strip().splitlines()
    assert len(lines) == 1, more.stderr
    assert "missing from the cache" in lines[0] and "unreachable" in lines[0]
    assert re.search(r": \d+ response\(s\) missing", lines[0])


async def test_pass_at_k_sends_one_draw_of_k_distinct_samples_per_problem_and_rescores_with_no_call(
    stoppable: StoppableGateway, tmp_path: Path
) -> None:
    builtin = (Path(__file__).parent.parent / "scorer" / "tasks" / "humaneval.yaml").read_text()
    sampled = (
        builtin.replace("task: humaneval", "task: humaneval_sampled\nrepeats: 4")
        .replace("temperature: 0", "temperature: 0.8")
        .replace("max_gen_toks: 128", "max_gen_toks: 16")
        .replace('until: ["\\nclass", "\\ndef", "\\n#"]', 'until: ["\\nclass"]')  # a tiny model stops at once
        .replace("k: 1", "k: 4")
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "humaneval_sampled.yaml").write_text(sampled)
    outcome = await scorer(
        "run", "humaneval_sampled", "--model", "smollm2", "--limit", "2", "--gateway", stoppable.url,
        "--run-id", "passk", "--cache-dir", str(stoppable.cache_dir), "--include-path", str(tasks),
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr[-3000:]
    generated = [
        r
        for r in read_records(shard_paths(run_dir(stoppable.cache_dir, "passk")))
        if r["endpoint"] == "/v1/completions"
    ]
    assert len(generated) == 2 and {r["served"] for r in generated} == {"miss"}
    for record in generated:  # one request per problem, pinned to sample 0, k choices in it
        assert record["sample"] == 0 and record["request"]["n"] == 4
        texts = [choice["text"] for choice in record["response"]["choices"]]
        shown = {k: v for k, v in record["request"].items() if k != "prompt"}
        assert len(texts) == 4 and len(set(texts)) > 1, (shown, texts)
    at_run = read_results(scorer_dir(stoppable, "passk") / "results.json")
    await stoppable.stop()
    rescored = await scorer("score", "passk", "--cache-dir", str(stoppable.cache_dir), block_network=True)
    assert rescored.code == 0, rescored.stderr[-3000:]
    assert metric_values(read_results(scorer_dir(stoppable, "passk") / "results.json")) == metric_values(
        at_run
    )
