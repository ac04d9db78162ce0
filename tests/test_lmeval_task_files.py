"""lm-eval's own task files for arc_easy, hellaswag, gsm8k and one mmlu subject run in the scorer unchanged.

Each file (with the ``utils.py`` or included template it needs) is copied at test time from the
installed ``lm_eval`` package; only where the data is changes: the ``dataset_path`` line becomes
``dataset_path: json`` and a ``dataset_kwargs.data_files`` block naming small local JSONL files this
module writes (a handful of documents per split, in the real datasets' field shapes), and a
``dataset_name`` line becomes ``dataset_name: null``. The rewrite is line by line on the YAML text,
so every other byte, ``!function`` tags and quoting included, is lm-eval's own; a test proves it.

The scorer must load each, build lm-eval's prompts byte for byte (lm-eval itself builds its own, with
the same ``num_fewshot`` and seed), and after lm-eval runs them through the gateway, `scorer run`
sends nothing upstream and `scorer score` gives lm-eval's numbers.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scorer.rounds import eval_prompts
from scorer.runner import _with_fewshot, gather_documents
from scorer.tasks import load_task_file
from tests.scorer_fixtures import StoppableGateway, scorer, scorer_run, stoppable_gateway
from tests.test_fewshot_parity import DUMPER, SEED, _write_jsonl
from tests.test_lmeval import offline_env
from tests.test_scorer_parity import lm_eval, lmeval_args, values_and_stderrs
from tests.upstreams import VLLMServer

pytestmark = pytest.mark.lmeval


def _lmeval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")  # found, not imported: lm-eval runs in its own process
    assert spec is not None and spec.submodule_search_locations, "lm_eval is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


LMEVAL_TASKS = _lmeval_tasks_dir()
# A YAML line setting a dataset key, its key quoted or not (mmlu's subject files quote theirs).
_DATASET_LINE = re.compile(r'^"?(dataset_path|dataset_name|dataset_kwargs)"?\s*:.*$')


def _arc(split: str, i: int, labels: str = "ABCD") -> dict[str, Any]:
    animals = ["a fish", "a bird", "a dog", "a frog", "a snake", "a bee"]
    return {
        "id": f"Mercury_{split}_{i}",
        "question": f"Which of these does {animals[i % len(animals)]} use to move ({split} {i})?",
        "choices": {
            "text": [f"fins {i}", f"wings {i}", f"legs {i}", f"roots {i}"][: len(labels)],
            "label": list(labels),
        },
        "answerKey": labels[i % len(labels)],
    }


def _hellaswag(split: str, i: int) -> dict[str, Any]:
    return {
        "ind": 100 + i,
        "activity_label": ["Making a cake", "Washing dishes", "Tying a tie", "Painting a fence"][i % 4],
        "ctx_a": f"A person stands in a kitchen holding a bowl ({split} {i}).",
        "ctx_b": "they [step] put the bowl on the counter and",  # WikiHow's bracketed artifacts
        "ctx": "",
        "endings": [
            "start mixing flour and eggs.",
            "drive away in a [title] car.",
            "sing to the bowl loudly.",
            "fall asleep on the floor.",
        ],
        "source_id": f"wikihow~{i}",
        "split": split,
        "split_type": "indomain",
        "label": str(i % 4),  # a string in the real data
    }


def _gsm8k(split: str, i: int) -> dict[str, Any]:
    have, more = 3 + i, 2 * i + 1
    total = have + more
    return {
        "question": f"Tom has {have} apples and buys {more} more at the {split} market. How many has he?",
        "answer": f"He has {have} + {more} = <<{have}+{more}={total}>>{total}.\n#### {total}",
    }


def _mmlu(split: str, i: int) -> dict[str, Any]:
    return {
        "question": f" Which planet is number {i + 1} from the Sun ({split})? ",
        "subject": "astronomy",
        "choices": ["Mercury", "Venus", "Earth", "Mars"],
        "answer": i % 4,
    }


@dataclass(frozen=True)
class LmevalTask:
    """One of lm-eval's tasks: its files under ``lm_eval/tasks`` and the documents written per split."""

    name: str
    files: tuple[str, ...]  # the first with a dataset_path gets the data_files
    splits: dict[str, list[dict[str, Any]]]


COPIED = [
    LmevalTask(
        "arc_easy",
        ("arc/arc_easy.yaml",),
        {
            "train": [_arc("train", i, "ABCD" if i % 3 else "1234") for i in range(5)],
            "validation": [_arc("validation", i) for i in range(2)],
            "test": [_arc("test", 0), _arc("test", 1, "1234"), _arc("test", 2, "ABC"), _arc("test", 3)],
        },
    ),
    LmevalTask(
        "hellaswag",
        ("hellaswag/hellaswag.yaml", "hellaswag/utils.py"),
        {
            "train": [_hellaswag("train", i) for i in range(4)],
            "validation": [_hellaswag("val", i) for i in range(3)],
        },
    ),
    LmevalTask(
        "gsm8k",
        ("gsm8k/gsm8k.yaml",),
        {"train": [_gsm8k("train", i) for i in range(6)], "test": [_gsm8k("test", i) for i in range(2)]},
    ),
    LmevalTask(
        "mmlu_astronomy",
        ("mmlu/default/_default_template_yaml", "mmlu/default/mmlu_astronomy.yaml"),
        {"dev": [_mmlu("dev", i) for i in range(5)], "test": [_mmlu("test", i) for i in range(4)]},
    ),
]
# Prompts compared per task: the file's own few-shot count, and lm-eval's --num_fewshot K as `name:K`.
PROMPT_KEYS = [
    "arc_easy",
    "arc_easy:3",
    "hellaswag",
    "hellaswag:3",
    "gsm8k",
    "mmlu_astronomy",
    "mmlu_astronomy:5",
]


def point_at_local(text: str, data_files: dict[str, Path] | None) -> str:
    """``text`` with its dataset lines pointed at local JSON files; every other line as it was.

    A ``dataset_path`` line becomes ``dataset_path: json`` plus ``dataset_kwargs.data_files`` mapping
    each split to its file (or is left alone when ``data_files`` is None: that file only names the
    subset); a ``dataset_name`` line becomes ``dataset_name: null`` (``json`` has no subsets).
    """
    lines = []
    for line in text.splitlines(keepends=True):
        match = _DATASET_LINE.match(line.rstrip("\n"))
        if match is None:
            lines.append(line)
        elif match[1] == "dataset_kwargs":
            raise AssertionError("the file has dataset_kwargs of its own: extend point_at_local")
        elif match[1] == "dataset_name":
            lines.append("dataset_name: null\n")
        elif data_files is None:
            lines.append(line)
        else:
            lines.append("dataset_path: json\ndataset_kwargs:\n  data_files:\n")
            lines.extend(f"    {split}: {path}\n" for split, path in data_files.items())
    return "".join(lines)


def copy_task(task: LmevalTask, folder: Path) -> None:
    """``task``'s files from the installed lm-eval into ``folder``, its data written and pointed at."""
    data_files = {}
    for split, docs in task.splits.items():
        data_files[split] = folder / f"{task.name}_{split}.jsonl"
        _write_jsonl(data_files[split], docs)
    pointed = False
    for relative in task.files:
        source = LMEVAL_TASKS / relative
        if source.suffix == ".py":
            shutil.copyfile(source, folder / source.name)
            continue
        text = source.read_text()
        has_path = any(_DATASET_LINE.match(line) and "dataset_path" in line for line in text.splitlines())
        (folder / source.name).write_text(
            point_at_local(text, None if pointed or not has_path else data_files)
        )
        pointed = pointed or has_path
    assert pointed, f"{task.name}: no copied file names a dataset_path"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lmeval-task-files")
    for task in COPIED:
        copy_task(task, folder)
    return folder


@pytest.fixture(scope="module")
def lmeval_requests(task_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Every request lm-eval builds from the copied files, per ``PROMPT_KEYS`` entry (one process)."""
    out = task_dir / "lmeval-prompts.json"
    env = offline_env(tmp_path_factory.mktemp("hf"))
    command = [sys.executable, str(DUMPER), str(task_dir), str(out), str(SEED), *PROMPT_KEYS]
    done = subprocess.run(command, env=env, cwd=task_dir, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(out.read_text()))


@pytest.mark.parametrize("task", COPIED, ids=[t.name for t in COPIED])
def test_the_copies_differ_from_lm_evals_files_only_in_the_dataset_lines(
    task: LmevalTask, task_dir: Path
) -> None:
    written = {"dataset_path: json", "dataset_kwargs:", "  data_files:", "dataset_name: null"}
    written |= {f"    {split}: {task_dir / f'{task.name}_{split}.jsonl'}" for split in task.splits}
    for relative in task.files:
        original = (LMEVAL_TASKS / relative).read_text().splitlines()
        copied = (task_dir / Path(relative).name).read_text().splitlines()
        diff = list(difflib.ndiff(original, copied))
        removed = [line[2:] for line in diff if line.startswith("- ")]
        added = [line[2:] for line in diff if line.startswith("+ ")]
        assert all(_DATASET_LINE.match(line) for line in removed), removed
        assert set(added) <= written, added
        if relative.endswith(".py"):
            assert removed == added == []


@pytest.mark.parametrize("name", PROMPT_KEYS)
def test_scorer_builds_lm_evals_prompts_from_its_own_task_files(
    name: str, task_dir: Path, lmeval_requests: dict[str, list[Any]]
) -> None:
    task_name, _, shots = name.partition(":")
    task = _with_fewshot(load_task_file(task_dir / f"{task_name}.yaml"), int(shots) if shots else None)
    docs, _ = gather_documents(task, None, SEED)
    ours = []
    for prompt in eval_prompts(task, docs):
        for ask in prompt.asks:
            if ask.kind == "generate":  # lm-eval's [context, gen_kwargs]: the task's generation kwargs
                ours.append([prompt.doc_id, [ask.context, task.raw["generation_kwargs"]]])
            else:
                ours.append([prompt.doc_id, [ask.context, ask.continuation]])
    theirs = lmeval_requests[name]
    assert len(ours) == len(theirs) > 0
    for mine, lm in zip(ours, theirs, strict=True):
        assert mine == lm
    if shots or task.num_fewshot:  # the examples really are there
        assert ours[0][1][0].count(task.raw["fewshot"]["fewshot_delimiter"]) >= task.num_fewshot


def test_versions_and_aliases_are_lm_evals_metadata_version_and_task_alias(task_dir: Path) -> None:
    gsm8k = load_task_file(task_dir / "gsm8k.yaml")
    astronomy = load_task_file(task_dir / "mmlu_astronomy.yaml")
    assert (gsm8k.version, gsm8k.alias) == (3.0, "gsm8k")  # its metadata.version, lm-eval's task.VERSION
    assert (astronomy.version, astronomy.alias) == (1.0, "astronomy")
    arc = (task_dir / "arc_easy.yaml").read_text()
    unversioned = task_dir / "arc_unversioned.yaml"
    unversioned.write_text(arc[: arc.index("metadata:")].replace("task: arc_easy", "task: arc_unversioned"))
    assert load_task_file(unversioned).version == "Yaml"  # lm-eval's ConfigurableTask.VERSION


# -- end to end through the real model ----------------------------------------------------------------

LIVE = ["arc_easy", "hellaswag", "mmlu_astronomy", "gsm8k"]


@pytest.fixture
async def stoppable(vllm: VLLMServer, tmp_path: Path) -> AsyncIterator[StoppableGateway]:
    async with stoppable_gateway(vllm, tmp_path) as gateway:
        yield gateway


async def test_after_lm_eval_runs_its_own_task_files_scorer_sends_nothing_and_scores_the_same(
    stoppable: StoppableGateway, task_dir: Path, tmp_path: Path
) -> None:
    theirs = await lm_eval(stoppable, "lmeval-files", tmp_path, LIVE, num_concurrent=4, task_dir=task_dir)
    calls = Counter(stoppable.relay.calls)
    assert calls["/v1/completions"] > 0

    common = ["--cache-dir", str(stoppable.cache_dir), "--json"]
    ran = await scorer_run(stoppable, "lmeval-files", ",".join(LIVE), *lmeval_args("concurrent", task_dir))
    assert ran.code == 0, ran.stderr[-3000:]
    assert Counter(stoppable.relay.calls) == calls, "the scorer reached the upstream: a request differed"

    await stoppable.stop()
    scored = await scorer("score", "lmeval-files", *common, block_network=True)
    assert scored.code == 0, scored.stderr[-3000:]
    mine = json.loads(scored.stdout)
    assert values_and_stderrs(mine) == values_and_stderrs(theirs)
    assert set(mine["results"]["gsm8k"]) >= {
        "exact_match,strict-match",
        "exact_match_stderr,flexible-extract",
    }
    for task in LIVE:
        assert mine["results"][task] == theirs["results"][task], task
        for key in ("versions", "n-shot", "higher_is_better"):
            assert mine[key][task] == theirs[key][task], (key, task)
