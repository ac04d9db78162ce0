"""``!function`` helpers from a ``utils.py`` beside the task file, run as lm-eval runs them.

lm-eval itself (its ``TaskManager``, no model, no network) builds the prompts of a task whose
``process_docs``, ``doc_to_text``, ``doc_to_choice`` and ``doc_to_target`` are Python helpers; the
scorer must build the same. ``process_results`` is checked through `scorer score` on a stored run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scorer.errors import BadInput
from scorer.replay import score_run
from scorer.tasks import load_task_file
from tests.scorer_synthetic import write_run
from tests.test_fewshot_parity import DUMPER, SEED, _ours, _theirs, _write_jsonl
from tests.test_lmeval import offline_env

UTILS = """
import datasets


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(lambda doc: {"query": doc["stem"].strip().capitalize(), "gold": int(doc["label"])})


def text(doc):
    return "Q: " + doc["query"] + "\\nA:"


def choices(doc):
    return [c.upper() for c in doc["options"]]


def target(doc):
    return doc["gold"]


def results(doc, results):
    answer = results[0]
    return {"exact": float(answer == doc["a"]), "long": float(len(answer) > 1)}
"""

HELPED = """task: helped
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA}/helped_test.jsonl
    train: {DATA}/helped_train.jsonl
test_split: test
training_split: train
num_fewshot: 2
output_type: multiple_choice
process_docs: !function utils.process_docs
doc_to_text: !function utils.text
doc_to_choice: !function utils.choices
doc_to_target: !function utils.target
"""


def _docs(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {"stem": f"  {prefix} stem {i} ", "options": ["a", "b", "c"], "label": str(i % 3)} for i in range(n)
    ]


@pytest.fixture(scope="module")
def helper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("helper-tasks")
    (folder / "utils.py").write_text(UTILS)
    _write_jsonl(folder / "helped_test.jsonl", _docs("t", 5))
    _write_jsonl(folder / "helped_train.jsonl", _docs("r", 6))
    (folder / "helped.yaml").write_text(HELPED.replace("{DATA}", str(folder)))
    return folder


@pytest.mark.lmeval
def test_helper_functions_build_the_prompts_lm_eval_builds(helper_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "prompts.json"
    command = [sys.executable, str(DUMPER), str(helper_dir), str(out), str(SEED), "helped"]
    done = subprocess.run(command, env=offline_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    theirs = _theirs(json.loads(out.read_text())["helped"], False)
    ours = _ours(helper_dir, "helped")
    assert ours[0][1][0].startswith("Q: R stem")  # process_docs ran on the few-shot pool too
    assert ours[0][1][1] == " A"
    assert ours == theirs


def test_process_results_values_are_averaged_with_their_stderr(tmp_path: Path) -> None:
    (tmp_path / "utils.py").write_text(UTILS)
    (tmp_path / "gen.yaml").write_text(
        """task: gen_helped
dataset_path: json
dataset_kwargs: {data_files: {test: unused.jsonl}}
test_split: test
doc_to_text: "Q: {{q}}\\nA:"
doc_to_target: "{{a}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 8, temperature: 0}
process_results: !function utils.results
metric_list:
  - metric: exact
    aggregation: mean
    higher_is_better: true
  - metric: long
"""
    )
    task = load_task_file(tmp_path / "gen.yaml")
    docs = [{"q": str(i), "a": str(i)} for i in range(4)]
    write_run(tmp_path / "cache", "r", task, docs, lambda i, doc: doc["a"] if i < 3 else "12")

    results = score_run(tmp_path / "cache", "r", write=False).document["results"]["gen_helped"]

    assert results["exact,none"] == 0.75
    assert results["exact_stderr,none"] == pytest.approx(0.25)
    assert results["long,none"] == 0.25


def test_a_function_where_the_scorer_runs_none_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "utils.py").write_text(UTILS)
    path = tmp_path / "filtered.yaml"
    path.write_text(
        HELPED.replace("{DATA}", str(tmp_path))
        + "filter_list:\n  - name: custom\n    filter:\n      - function: !function utils.text\n"
    )
    with pytest.raises(
        BadInput, match=r"filtered\.yaml: filter_list\[0\]\.filter\[0\]\.function is !function utils\.text"
    ):
        load_task_file(path)


def test_a_function_in_a_key_the_scorer_ignores_is_neither_run_nor_refused(tmp_path: Path) -> None:
    (tmp_path / "utils.py").write_text(UTILS)
    path = tmp_path / "decontaminated.yaml"
    text = HELPED.replace("{DATA}", str(tmp_path))
    path.write_text(
        text + "should_decontaminate: true\ndoc_to_decontamination_query: !function utils.nothing\n"
    )
    assert load_task_file(path).name == "helped"  # utils has no `nothing`: it was never looked up


@pytest.mark.parametrize("body", ["import sys\nsys.exit('needs a tool')\n", "raise SystemExit(3)\n"])
def test_a_helper_module_that_exits_while_imported_is_refused_in_one_line(tmp_path: Path, body: str) -> None:
    (tmp_path / "utils.py").write_text(body)
    path = tmp_path / "helped.yaml"
    path.write_text(HELPED.replace("{DATA}", str(tmp_path)))
    with pytest.raises(BadInput, match=r"helped\.yaml.*: doc_to_text is !function utils\.text: .*SystemExit"):
        load_task_file(path)


def test_a_helper_module_that_fails_to_import_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "utils.py").write_text("raise RuntimeError('broken helper')\n")
    path = tmp_path / "helped.yaml"
    path.write_text(HELPED.replace("{DATA}", str(tmp_path)))
    with pytest.raises(
        BadInput, match=r"helped\.yaml.*: doc_to_text is !function utils\.text: .*broken helper"
    ):
        load_task_file(path)
