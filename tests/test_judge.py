"""Judged tasks against a stand-in judge whose verdicts a script chooses, and the math_verify metric.

The stand-in judge is a sender with the gateway client's ``send`` signature: it
answers each judge request from a script keyed on what the prompt shows, and
stores the answer in the cache under the request's key, as the gateway would.
`scorer score` then replays both rounds from the cache alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from cache.index import ResponseIndex
from scorer.errors import BadInput, MissingResponses
from scorer.judge.config import JudgeConfig, judge_label, judge_of, parse_judge
from scorer.judge.parse import TIE, parse_verdict
from scorer.judge.replay import baseline_of, eval_plans_from_cache
from scorer.judge.round import JudgeSettings
from scorer.judge.run import send_judge, send_turns, with_judge
from scorer.replay import documents_of, score_run
from scorer.requests import Request
from scorer.results import table
from scorer.runner import gather_documents
from scorer.store import ResponseReader, RunFolder
from scorer.tasks import BUILTIN_DIR, TaskConfig, load_task_file, parse_task
from tests.scorer_synthetic import MODEL, write_run

JUDGE = "judge-model"


def judged_task(kind: str, prompt: str, **extra: Any) -> TaskConfig:
    """A chat task over ``{"q", "a"}`` documents judged by ``kind``."""
    return parse_task(
        {
            "task": f"judged_{kind}",
            "dataset": {"path": "json", "data_files": {"test": "unused.jsonl"}},
            "eval_split": "test",
            "api": "chat",
            "doc_to_text": "{{q}}",
            "doc_to_target": "{{a}}",
            "generation_kwargs": {"until": [], "max_gen_toks": 16, "temperature": 0},
            "metric_list": [],
            "judge": {"model": JUDGE, "kind": kind, "prompt": prompt},
            **extra,
        },
        "test task",
    )


def chat_answer(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


class ScriptedJudge:
    """A stand-in for the gateway client: answers from ``script(prompt)``, stored in the cache by key."""

    def __init__(self, cache_dir: Path, script: Callable[[str], str]) -> None:
        self.cache_dir = cache_dir
        self.script = script
        self.calls: list[tuple[str | None, str]] = []  # (label, prompt) of each request answered

    async def send(
        self, requests: Iterable[Request], desc: str, label: str | None = None
    ) -> dict[str, dict[str, Any]]:
        distinct = {r.key: r for r in requests}
        answers = {}
        index = ResponseIndex(self.cache_dir)
        try:
            for key, request in distinct.items():
                prompt = request.body["messages"][-1]["content"]
                self.calls.append((label, prompt))
                answers[key] = chat_answer(self.script(prompt))
                index.set(key, orjson.dumps(answers[key]))
        finally:
            index.close()
        return answers


async def judge_run(
    tmp_path: Path,
    task: TaskConfig,
    docs: list[dict[str, Any]],
    answer: Callable[[int, dict[str, Any]], str],
    script: Callable[[str], str],
    judge_only_these: set[int] | None = None,
) -> ScriptedJudge:
    """A synthetic run of ``task`` (the model answered ``answer``), judged by the scripted judge."""
    write_run(tmp_path, "j", task, docs, answer)
    folder = RunFolder(tmp_path, "j")
    manifest = folder.read_manifest()
    manifest.judge_namespaces[JUDGE] = JUDGE
    folder.write_manifest(manifest)
    reader = ResponseReader(tmp_path, "j")
    try:
        plans = eval_plans_from_cache(reader, manifest, task, documents_of(folder, manifest, task))
        responses = {k: v for k, v in reader.get_many(r.key for p in plans for r in p.requests)}
    finally:
        reader.close()
    stand_in = ScriptedJudge(tmp_path, script)
    sent: dict[str, int] = {}
    answers = await send_turns(stand_in, task, MODEL, plans, responses, sent)
    if judge_only_these is not None:
        plans = [p for p in plans if p.doc_id in judge_only_these]
    judge = judge_of(task.raw)
    assert judge is not None
    baseline = baseline_of(tmp_path, judge, task, documents_of(folder, manifest, task))
    await send_judge(
        stand_in, task, JudgeSettings(judge, JUDGE, manifest.seed, baseline), plans, answers, sent
    )
    return stand_in


def results(tmp_path: Path) -> dict[str, Any]:
    return score_run(tmp_path, "j").document


# -- parsing ------------------------------------------------------------------------------------


def judge(kind: str, **extra: Any) -> JudgeConfig:
    raw = parse_judge({"model": JUDGE, "kind": kind, "prompt": "p", **extra}, "test")
    assert raw is not None
    return JudgeConfig.from_raw(raw)


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        ("single", "Good answer. Rating: [[8]]", 8.0),
        ("single", "Rating: [[7.5]]", 7.5),
        ("single", "Rating: [6]", 6.0),  # MT-Bench's backup pattern
        ("single", "Rating: [[11]]", None),  # outside the scale
        ("single", "[[3]] no, [[9]]", None),  # two different ratings say nothing
        ("single", "[[4]] and again [[4]]", 4.0),
        ("single", "I would give it eight.", None),
        ("pairwise", "A is better. [[A]]", "A"),
        ("pairwise", "[[B]]", "B"),
        ("pairwise", "Equally good: [[C]]", TIE),
        ("pairwise", "[[A]] or maybe [[B]]", None),
        ("pairwise", "Assistant A", None),
        ("rubric", "meets the rubric [[PASS]]", True),
        ("rubric", "[[fail]]", False),
        ("rubric", "[[PASS]] [[FAIL]]", None),
        ("rubric", "looks fine", None),
    ],
)
def test_verdicts_of_every_kind_are_read_or_marked_unparsed(kind: str, text: str, value: Any) -> None:
    verdict = parse_verdict(judge(kind), text)
    assert verdict.value == value
    assert verdict.parsed is (value is not None)


def test_a_custom_pattern_reads_its_first_group() -> None:
    custom = judge("single", pattern=r"Score: (\d+)/10")
    assert parse_verdict(custom, "Score: 9/10").value == 9.0
    assert parse_verdict(custom, "Rating: [[9]]").value is None


@pytest.mark.parametrize(
    ("judge_section", "message"),
    [
        ({"kind": "single", "prompt": "p"}, "judge.model is required"),
        ({"model": "m", "kind": "vibes", "prompt": "p"}, "judge.kind 'vibes'"),
        ({"model": "m", "prompt": "{% if %}"}, "judge.prompt: broken Jinja"),
        ({"model": "m", "prompt": "p", "scale": [10, 1]}, "judge.scale"),
        ({"model": "m", "prompt": "p", "pattern": "no group"}, "judge.pattern"),
        ({"model": "m", "prompt": "p", "temperature": 1}, "unknown judge field(s) temperature"),
    ],
)
def test_a_bad_judge_section_is_one_line_naming_the_field(
    judge_section: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadInput, match=re.escape(message)):
        parse_task(
            {
                "task": "t",
                "dataset": "x.jsonl",
                "eval_split": "test",
                "doc_to_text": "q",
                "doc_to_target": "a",
                "api": "chat",
                "judge": judge_section,
            },
            "f.yaml",
        )


# -- aggregation against a hand computation ------------------------------------------------------

PAIRWISE_PROMPT = "Q: {{question}}\n[A] {{answer_a}}\n[B] {{answer_b}}"


def pairwise_script(prompt: str) -> str:
    """Per document (its number in the question), a judge behaviour; sees which side is the model's."""
    doc = int(re.search(r"Q: question (\d+)", prompt).group(1))  # type: ignore[union-attr]
    model_first = re.search(r"\[A\] MODEL", prompt) is not None
    if doc == 0:  # prefers the model's answer wherever it stands
        return "[[A]]" if model_first else "[[B]]"
    if doc == 1:  # always the first position: the swap must cancel it
        return "[[A]]"
    if doc == 2:
        return "A tie. [[C]]"
    if doc == 3:  # prefers the reference wherever it stands
        return "[[B]]" if model_first else "[[A]]"
    if doc == 4:  # one order unreadable: the comparison is unscored, not lost
        return "[[A]]" if model_first else "I cannot decide."
    return "[[C]]" if model_first else "[[B]]"  # doc 5: tie one way, model wins the other


async def test_pairwise_win_rate_swaps_orders_counts_ties_half_and_unparsed_apart(tmp_path: Path) -> None:
    task = judged_task("pairwise", PAIRWISE_PROMPT)
    docs = [{"q": f"question {i}", "a": f"REF {i}"} for i in range(6)]
    stand_in = await judge_run(tmp_path, task, docs, lambda i, d: f"MODEL {i}", pairwise_script)

    assert len(stand_in.calls) == 12  # two orders per comparison
    assert {label for label, _ in stand_in.calls} == {judge_label(task.name)}
    entry = results(tmp_path)["results"][task.name]
    # by hand: doc0 1, doc1 (1+0)/2, doc2 0.5, doc3 0, doc4 unscored, doc5 (0.5+1)/2
    assert entry["judge_win_rate,none"] == pytest.approx((1 + 0.5 + 0.5 + 0 + 0.75) / 5)
    assert (entry["judge_wins,none"], entry["judge_losses,none"], entry["judge_ties,none"]) == (1, 1, 3)
    assert (entry["judge_scored,none"], entry["judge_unscored,none"], entry["judge_unparsed,none"]) == (
        5,
        1,
        1,
    )
    document = results(tmp_path)
    better = document["higher_is_better"][task.name]
    assert (better["judge_win_rate"], better["judge_losses"], better["judge_unparsed"]) == (True, False, None)
    rows = {line.split("|")[5]: line.split("|")[6] for line in table(document).splitlines()[2:]}
    assert (rows["judge_win_rate"], rows["judge_losses"], rows["judge_ties"]) == ("↑", "↓", " ")


def baseline_task() -> TaskConfig:
    """The pairwise task as another model's run made it (its requests have keys of their own)."""
    kwargs = {"until": [], "max_gen_toks": 32, "temperature": 0}
    return judged_task("pairwise", PAIRWISE_PROMPT, generation_kwargs=kwargs)


async def test_pairwise_against_another_run_compares_with_its_answers_in_both_orders(tmp_path: Path) -> None:
    docs = [{"q": f"question {i}", "a": f"REF {i}"} for i in range(6)]
    write_run(tmp_path, "base", baseline_task(), docs, lambda i, d: f"BASE {i}")
    task = with_judge(judged_task("pairwise", PAIRWISE_PROMPT), None, "base")

    def script(prompt: str) -> str:
        assert "REF" not in prompt  # the other run's answer stands where the reference would
        return pairwise_script(prompt.replace("BASE", "REF"))

    stand_in = await judge_run(tmp_path, task, docs, lambda i, d: f"MODEL {i}", script)

    prompts = [p for _, p in stand_in.calls]
    assert len(prompts) == 12
    assert {"Q: question 0\n[A] MODEL 0\n[B] BASE 0", "Q: question 0\n[A] BASE 0\n[B] MODEL 0"} <= set(
        prompts
    )
    entry = results(tmp_path)["results"][task.name]  # replayed: the baseline's answers read from the cache
    assert entry["judge_win_rate,none"] == pytest.approx((1 + 0.5 + 0.5 + 0 + 0.75) / 5)


@pytest.mark.parametrize(
    ("base_docs", "expected"),
    [
        (None, "no run 'base'"),
        ([{"q": f"question {i}", "a": "-"} for i in range(2)], "did not answer document 2"),
        ([{"q": "another", "a": "-"}] * 3, "did not answer document 0"),
    ],
)
def test_a_baseline_run_that_does_not_fit_is_refused_naming_why(
    tmp_path: Path, base_docs: list[dict[str, Any]] | None, expected: str
) -> None:
    docs = [{"q": f"question {i}", "a": "-"} for i in range(3)]
    plain = judged_task("pairwise", PAIRWISE_PROMPT)
    if base_docs is not None:
        write_run(tmp_path, "base", baseline_task(), base_docs, lambda i, d: "x")
    task = with_judge(plain, None, "base")
    judge = judge_of(task.raw)
    assert judge is not None and judge.against_run == "base"
    write_run(tmp_path, "j", task, docs, lambda i, d: "y")
    folder = RunFolder(tmp_path, "j")
    with pytest.raises(BadInput, match=expected):
        baseline_of(tmp_path, judge, task, documents_of(folder, folder.read_manifest(), task))


def test_judge_against_needs_a_pairwise_judge() -> None:
    with pytest.raises(BadInput, match="against_run .* needs kind: pairwise"):
        with_judge(judged_task("single", "{{answer}}"), None, "base")


SINGLE_VERDICTS = ["Rating: [[8]]", "[[3]]", "Rating: [5]", "Rating: [[11]]", "[[2]] or [[9]]", "no idea"]


async def test_single_grading_mean_leaves_unparsed_ratings_out_and_counts_them(tmp_path: Path) -> None:
    task = judged_task("single", "Rate: {{question}} / {{answer}}")
    docs = [{"q": f"question {i}", "a": "-"} for i in range(6)]

    def script(prompt: str) -> str:
        return SINGLE_VERDICTS[int(re.search(r"question (\d+)", prompt).group(1))]  # type: ignore[union-attr]

    await judge_run(tmp_path, task, docs, lambda i, d: f"answer {i}", script)

    entry = results(tmp_path)["results"][task.name]
    assert entry["judge_rating,none"] == pytest.approx((8 + 3 + 5) / 3)
    assert (entry["judge_scored,none"], entry["judge_unparsed,none"]) == (3, 3)
    rows = (RunFolder(tmp_path, "j").scorer / f"judgments_{task.name}.jsonl").read_bytes().splitlines()
    assert [orjson.loads(r)["verdict"] for r in rows] == [8.0, 3.0, 5.0, None, None, None]


async def test_rubric_pass_rate(tmp_path: Path) -> None:
    task = judged_task("rubric", "Does '{{answer}}' answer '{{question}}' as '{{reference}}'?")
    docs = [{"q": f"question {i}", "a": f"gold {i}"} for i in range(4)]
    verdicts = ["[[PASS]]", "[[FAIL]]", "[[pass]]", "hmm"]

    def script(prompt: str) -> str:
        assert re.search(r"as 'gold \d'", prompt)  # the reference is the task's target
        return verdicts[int(re.search(r"question (\d+)", prompt).group(1))]  # type: ignore[union-attr]

    await judge_run(tmp_path, task, docs, lambda i, d: "x", script)
    entry = results(tmp_path)["results"][task.name]
    assert entry["judge_pass_rate,none"] == pytest.approx(2 / 3)
    assert entry["judge_unparsed,none"] == 1


async def test_a_missing_verdict_is_a_loud_miss_with_the_count(tmp_path: Path) -> None:
    task = judged_task("single", "Rate {{answer}} to {{question}}")
    docs = [{"q": f"question {i}", "a": "-"} for i in range(5)]
    await judge_run(tmp_path, task, docs, lambda i, d: "x", lambda p: "[[5]]", judge_only_these={0, 1})

    with pytest.raises(MissingResponses) as caught:
        score_run(tmp_path, "j")
    assert caught.value.task == judge_label(task.name)
    assert len(caught.value.keys) == 3
    assert "3 response(s) missing" in str(caught.value) and "--judge-only" in str(caught.value)
    assert not (RunFolder(tmp_path, "j").scorer / "results.json").exists()


async def test_second_turn_follows_the_models_own_first_answer_and_each_turn_is_judged(
    tmp_path: Path,
) -> None:
    task = judged_task(
        "single",
        "turn {{turn}}: {{question}} -> {{answer}}",
        turns="turns",
        doc_to_text="{{turns[0]}}",
    )
    docs = [{"turns": [f"first {i}", f"second {i}"], "a": ""} for i in range(3)]

    def script(prompt: str) -> str:
        if prompt.startswith("second"):  # the model's turn 2 (a conversation request)
            return f"reply to {prompt}"
        return "[[9]]" if prompt.startswith("turn 2") else "[[4]]"

    stand_in = await judge_run(tmp_path, task, docs, lambda i, d: f"own answer {i}", script)
    labels = [label for label, _ in stand_in.calls]
    assert labels.count(task.name) == 3 and labels.count(judge_label(task.name)) == 6
    entry = results(tmp_path)["results"][task.name]
    assert entry["judge_rating,none"] == pytest.approx((4 * 3 + 9 * 3) / 6)
    assert entry["judge_rating_turn1,none"] == 4 and entry["judge_rating_turn2,none"] == 9
    rows = [
        orjson.loads(r)
        for r in (RunFolder(tmp_path, "j").scorer / f"judgments_{task.name}.jsonl").read_bytes().splitlines()
    ]
    turn2 = [r for r in rows if r["turn"] == 2 and r["doc_id"] == 1][0]
    assert turn2["messages"][-1]["content"] == "turn 2: second 1 -> reply to second 1"


# -- math_verify --------------------------------------------------------------------------------

MATH_TABLE = [
    ("1/2", "The answer is $\\frac{1}{2}$", True),
    ("\\frac{1}{2}", "0.5", True),
    ("3", "so \\boxed{3}", True),
    ("3", "so \\boxed{4}", False),
    ("x^2+2x+1", "$(x+1)^2$", True),
    ("10", "The final answer is 10 cm", True),
    ("12\\text{ cm}", "$12$", True),
    ("\\sqrt{2}", "$\\sqrt 2$", True),
    ("\\boxed{\\dfrac{3}{4}}", "$0.75$", True),
    ("5", "I think 6", False),
    ("(1,2)", "$(2,1)$", False),
    ("\\{1,2\\}", "$\\{2,1\\}$", True),
]


@pytest.mark.parametrize(("gold", "answer", "expected"), MATH_TABLE)
def test_math_verify_metric_agrees_with_math_verify_itself(gold: str, answer: str, expected: bool) -> None:
    from math_verify import parse, verify

    from scorer.metrics import Sample, get_metric

    metric = get_metric("math_verify")
    assert metric is not None
    value = metric.per_sample(Sample({}, gold, [answer]), {})
    delimited = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    assert value == float(verify(parse(delimited), parse(answer))) == float(expected)
    assert get_metric("exact_match").per_sample(Sample({}, gold, [answer]), {}) == 0.0  # type: ignore[union-attr]


# -- real benchmark files, loaded with the built-in tasks' field mapping (README, "Judged tasks") --------

MTBENCH_ROWS = [  # MT-Bench's question.jsonl shape: reference only in some categories
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now make it rhyme."]},
    {
        "question_id": 111,
        "category": "math",
        "turns": ["What is 2+2?", "And times 3?"],
        "reference": ["4", "12"],
    },
]
ALPACA_ROWS = [  # AlpacaEval's alpaca_eval.json: one JSON list
    {"instruction": "Name a colour.", "output": "Blue.", "generator": "gpt4_1106_preview", "dataset": "x"},
    {"instruction": "Say hi.", "output": "Hi!", "generator": "gpt4_1106_preview", "dataset": "x"},
]


def builtin_pointed_at(tmp_path: Path, name: str, data: Path) -> TaskConfig:
    """A built-in judged task with ``dataset.data_files.test`` pointed at ``data``, its judge scripted."""
    raw = yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text())
    raw["dataset"]["data_files"]["test"] = str(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return with_judge(load_task_file(path), JUDGE)  # judged by the scripted judge


@pytest.mark.parametrize("benchmark", ["mtbench", "alpaca"])
async def test_real_mtbench_and_alpacaeval_files_run_with_the_builtin_field_mapping(
    tmp_path: Path, benchmark: str
) -> None:
    if benchmark == "mtbench":
        data = tmp_path / "question.jsonl"
        data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in MTBENCH_ROWS))
        task = builtin_pointed_at(tmp_path, "mtbench_mini", data)
    else:
        data = tmp_path / "alpaca_eval.json"
        data.write_bytes(orjson.dumps(ALPACA_ROWS, option=orjson.OPT_INDENT_2))
        task = builtin_pointed_at(tmp_path, "alpaca_mini", data)
    docs, n_total = gather_documents(task, None, 1234)
    assert n_total == 2
    rows = MTBENCH_ROWS if benchmark == "mtbench" else ALPACA_ROWS
    stand_in = await judge_run(
        tmp_path, task, [docs.eval[i] for i in range(2)], lambda i, d: f"ANSWER {i}", judge_script(benchmark)
    )
    judged = [p for label, p in stand_in.calls if label == judge_label(task.name)]
    if benchmark == "mtbench":  # two turns each, the second asked after the model's own first answer
        asked = [p for label, p in stand_in.calls if label == task.name]
        assert asked == ["Now make it rhyme.", "And times 3?"]
        assert len(judged) == 4 and sum("What is 2+2?" in p for p in judged) == 2
    else:  # each instruction against its reference output, in both orders
        assert len(judged) == 4
        for row in rows:
            shown = [p for p in judged if row["instruction"] in p]
            assert len(shown) == 2 and all(str(row["output"]) in p and "ANSWER" in p for p in shown)
    entry = results(tmp_path)["results"][task.name]
    assert entry["judge_unparsed,none"] == 0 and entry["judge_scored,none"] == (
        4 if benchmark == "mtbench" else 2
    )


def judge_script(benchmark: str) -> Callable[[str], str]:
    """The model's later turns echo; the judge always rates 7 (single) or calls a tie (pairwise)."""

    def script(prompt: str) -> str:
        if prompt in ("Now make it rhyme.", "And times 3?"):
            return "a second answer"
        return "Rating: [[7]]" if benchmark == "mtbench" else "[[C]]"

    return script
