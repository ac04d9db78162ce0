"""Prompts equal lm-evaluation-harness's byte for byte, few-shot examples included.

lm-eval itself (its ``TaskManager`` on task YAML written here, local data, no model, no network)
builds every request of each task; the scorer builds its own from the same file and seed. Each
context and continuation must be the same string: the same few-shot documents in the same order
(one shared generator in document order for ``default``, the pool's head for ``first_n``), the
same description spacing and delimiters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scorer.errors import BadInput
from scorer.rounds import eval_prompts
from scorer.runner import _with_fewshot, gather_documents
from scorer.tasks import load_task_file
from tests.test_lmeval import offline_env

pytestmark = pytest.mark.lmeval

DUMPER = Path(__file__).parent / "lmeval_prompts.py"
SEED = 1234

MMLU_TEMPLATE = (
    '"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}'
    '\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"'
)


def _mmlu_docs(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "question": f" {prefix} question {i}? ",
            "choices": [f"{prefix}{i}a", f"{prefix}{i}b", f"{prefix}{i}c", f"{prefix}{i}d"],
            "answer": i % 4,
            "subject": "astronomy",
        }
        for i in range(n)
    ]


def _mc_task(name: str, fewshot: str) -> str:
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {{DATA}}/mmlu_test.jsonl
    dev: {{DATA}}/mmlu_dev.jsonl
    train: {{DATA}}/mmlu_train.jsonl
test_split: test
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {{{{subject}}}}.\\n\\n"
doc_to_text: {MMLU_TEMPLATE}
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
{fewshot}
"""


TASKS: dict[str, str] = {
    "mc_0shot": _mc_task("mc_0shot", "fewshot_split: dev\nnum_fewshot: 0"),
    "mc_5shot_first_n": _mc_task(
        "mc_5shot_first_n", "fewshot_split: dev\nfewshot_config:\n  sampler: first_n\nnum_fewshot: 5"
    ),
    "mc_5shot_default": _mc_task("mc_5shot_default", "fewshot_split: train\nnum_fewshot: 5"),
    # drawn from the evaluated split: the evaluated document (and its duplicate) is never its own example
    "mc_5shot_same_split": _mc_task("mc_5shot_same_split", "fewshot_split: test\nnum_fewshot: 5"),
    "mc_2shot_samples": _mc_task(
        "mc_2shot_samples",
        "num_fewshot: 2\nfewshot_config:\n  target_delimiter: ' => '\n  fewshot_delimiter: '\\n---\\n'\n"
        "  samples:\n"
        + "".join(
            f"    - {{question: 'fixed {i}', choices: [w{i}, x{i}, y{i}, z{i}], "
            f"answer: {i % 4}, subject: s}}\n"
            for i in range(4)
        ),
    ),
    "gen_3shot_train": """task: gen_3shot_train
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA}/arith_test.jsonl
    train: {DATA}/arith_train.jsonl
test_split: test
training_split: train
num_fewshot: 3
output_type: generate_until
description: "Add the numbers. "
doc_to_text: "Question: What is {{a}} plus {{b}}?\\nAnswer:"
doc_to_target: "{{answer}}"
fewshot_delimiter: "\\n\\n"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
filter_list:
  - name: first-number
    filter:
      - function: regex
        regex_pattern: "(-?\\\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
}


# ``NAME:K``: lm-eval's requests under ``--num_fewshot K``.
OVERRIDDEN = ["mc_0shot:5", "gen_3shot_train:1"]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fewshot-tasks")
    test = _mmlu_docs("t", 10)
    test.append(dict(test[3]))  # a duplicate: lm-eval drops every copy of the evaluated document
    _write_jsonl(folder / "mmlu_test.jsonl", test)
    _write_jsonl(folder / "mmlu_dev.jsonl", _mmlu_docs("d", 5))
    _write_jsonl(folder / "mmlu_train.jsonl", _mmlu_docs("r", 12))
    _write_jsonl(folder / "arith_test.jsonl", [{"a": i, "b": 2 * i, "answer": str(3 * i)} for i in range(6)])
    _write_jsonl(
        folder / "arith_train.jsonl", [{"a": 10 + i, "b": i, "answer": str(10 + 2 * i)} for i in range(9)]
    )
    for name, text in TASKS.items():
        (folder / f"{name}.yaml").write_text(text.replace("{DATA}", str(folder)))
    return folder


@pytest.fixture(scope="module")
def lmeval_requests(task_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Every request lm-eval builds for every task (one lm-eval process for all)."""
    out = task_dir / "lmeval-prompts.json"
    env = offline_env(tmp_path_factory.mktemp("hf"))
    command = [sys.executable, str(DUMPER), str(task_dir), str(out), str(SEED), *TASKS, *OVERRIDDEN]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(out.read_text()))


def _ours(task_dir: Path, name: str, limit: int | None = None) -> list[list[Any]]:
    """The scorer's requests for ``name`` as lm-eval lists them: ``[doc_id, [context, continuation]]``."""
    task = load_task_file(task_dir / f"{name}.yaml")
    docs, _ = gather_documents(task, limit, SEED)
    rows = []
    for prompt in eval_prompts(task, docs):
        for ask in prompt.asks:
            rows.append([prompt.doc_id, [ask.context, ask.continuation if ask.kind != "generate" else None]])
    return rows


def _theirs(rows: list[Any], output_type_generate: bool) -> list[list[Any]]:
    if output_type_generate:  # [context, gen_kwargs]: the context is what the scorer builds
        return [[doc_id, [args[0], None]] for doc_id, args in rows]
    return [[doc_id, list(args)] for doc_id, args in rows]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_prompt_equals_lm_evals_byte_for_byte(
    name: str, task_dir: Path, lmeval_requests: dict[str, list[Any]]
) -> None:
    ours = _ours(task_dir, name)
    theirs = _theirs(lmeval_requests[name], name.startswith("gen"))
    assert len(ours) == len(theirs)
    for mine, lm in zip(ours, theirs, strict=True):
        assert mine == lm


@pytest.mark.parametrize("name", OVERRIDDEN)
def test_num_fewshot_overrides_a_task_as_lm_eval_does_but_never_a_written_zero(
    name: str, task_dir: Path, lmeval_requests: dict[str, list[Any]]
) -> None:
    task_name, _, shots = name.partition(":")
    task = _with_fewshot(load_task_file(task_dir / f"{task_name}.yaml"), int(shots))
    docs, _ = gather_documents(task, None, SEED)
    ours = [
        [p.doc_id, [a.context, a.continuation if a.kind != "generate" else None]]
        for p in eval_prompts(task, docs)
        for a in p.asks
    ]
    assert ours == _theirs(lmeval_requests[name], task_name.startswith("gen"))
    assert task.num_fewshot == (0 if task_name == "mc_0shot" else int(shots))


def test_a_limit_shows_the_first_documents_the_same_examples(
    task_dir: Path, lmeval_requests: dict[str, list[Any]]
) -> None:
    theirs = _theirs(lmeval_requests["mc_5shot_default"], False)
    ours = _ours(task_dir, "mc_5shot_default", limit=3)
    assert ours == [row for row in theirs if row[0] < 3]


def test_examples_differ_between_documents_under_the_shared_generator(task_dir: Path) -> None:
    contexts = {ctx for _, (ctx, _) in _ours(task_dir, "mc_5shot_default")}
    assert len(contexts) == 11  # each document: its own question after its own draw


def test_the_description_is_followed_by_nothing_the_task_did_not_write(task_dir: Path) -> None:
    (_, (context, _)), *_ = _ours(task_dir, "mc_0shot")
    assert context.startswith(
        "The following are multiple choice questions (with answers) about astronomy.\n\nt "
    )


def test_an_unsupported_sampler_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "balanced.yaml"
    text = TASKS["mc_5shot_default"].replace("{DATA}", str(tmp_path))
    path.write_text(text + "fewshot_config:\n  sampler: balanced\n")
    with pytest.raises(BadInput, match=r"balanced\.yaml.*fewshot_config\.sampler 'balanced'"):
        load_task_file(path)


def test_an_lm_eval_include_is_read_beside_the_file_and_its_keys_are_overridden(task_dir: Path) -> None:
    (task_dir / "_template_yaml").write_text(TASKS["mc_5shot_first_n"].replace("{DATA}", str(task_dir)))
    path = task_dir / "included.yaml"
    path.write_text('include: _template_yaml\ntask: included\ndescription: "About astronomy.\\n\\n"\n')
    task = load_task_file(path)
    assert (task.name, task.num_fewshot, task.raw["fewshot"]["sampler"]) == ("included", 5, "first_n")
    assert task.raw["description"] == "About astronomy.\n\n"


def test_a_function_helper_with_no_module_beside_the_file_is_refused_naming_file_and_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "helper.yaml"
    text = TASKS["mc_0shot"].replace("{DATA}", str(tmp_path))
    path.write_text(text.replace("doc_to_target: answer", "doc_to_target: !function utils.target"))
    with pytest.raises(
        BadInput, match=r"helper\.yaml.*: doc_to_target is !function utils\.target: .*utils\.py"
    ):
        load_task_file(path)
