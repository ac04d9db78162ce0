"""Synthetic scorer runs: a manifest, documents and cached answers written straight to a store.

What `scorer run` would leave behind, without a model: token ids are made up (one id per
character) and stored as the gateway's /tokenize answers, and each request gets a completion
whose text the caller chooses. Used by tests that need a run but no model, and by the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from cache.index import ResponseIndex
from scorer.manifest import Manifest, TaskEntry
from scorer.requests import ModelSettings, RequestBuilder
from scorer.rounds import Documents, eval_prompts, plans_of
from scorer.store import RunFolder
from scorer.tasks import TaskConfig, parse_task
from scorer.tokenizer import TableTokenizer, Tokenizer, tokenize_key

MODEL = "smollm2"


class RecordingTokenizer:
    """Remembers every text asked for and answers with a placeholder id."""

    def __init__(self) -> None:
        self.texts: dict[str, None] = {}

    def encode(self, text: str) -> list[int]:
        self.texts[text] = None
        return [0] * max(1, len(text) // 4)


def generate_task(name: str = "synthetic", regex: str = r"(\d+)") -> TaskConfig:
    """A generate_until task over documents ``{"q": …, "a": …}``, scored by exact match."""
    return parse_task(
        {
            "task": name,
            "dataset": {"path": "json", "data_files": {"test": "unused.jsonl"}},
            "eval_split": "test",
            "doc_to_text": "Q: {{q}}\nA:",
            "doc_to_target": "{{a}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "temperature": 0},
            "filter_list": [{"name": "num", "filter": [{"function": "regex", "regex_pattern": regex}]}],
            "metric_list": [{"metric": "exact_match"}],
        },
        "synthetic task",
    )


def write_run(
    cache_dir: Path,
    run_id: str,
    task: TaskConfig,
    docs: list[dict[str, Any]],
    answer: Callable[[int, dict[str, Any]], str],
) -> int:
    """Store a run of ``task`` on ``docs`` whose model answered ``answer(i, doc)``; returns the requests."""
    folder = RunFolder(cache_dir, run_id)
    settings = ModelSettings(MODEL, MODEL)
    documents = Documents(dict(enumerate(docs)), {}, 0)

    def build(tok: Tokenizer):  # type: ignore[no-untyped-def]
        return plans_of(eval_prompts(task, documents), RequestBuilder(task, settings, tok))

    recorder = RecordingTokenizer()
    build(recorder)  # a dry run lists the texts the requests tokenize
    table = {t: [ord(c) % 5000 for c in t] for t in recorder.texts}
    plans = build(TableTokenizer(table))
    index = ResponseIndex(cache_dir)
    try:
        for text, ids in table.items():
            index.set(tokenize_key(MODEL, text), orjson.dumps({"tokens": ids, "count": len(ids)}))
        for plan in plans:
            body = {"choices": [{"index": 0, "text": answer(plan.doc_id, plan.doc), "finish_reason": "stop"}]}
            index.set(plan.requests[0].key, orjson.dumps(body))
    finally:
        index.close()
    manifest = Manifest(run_id, MODEL, MODEL, "http://synthetic", settings.seed, None, {})
    manifest.tasks[task.name] = TaskEntry(task.raw, len(docs), len(docs), 0)
    manifest.rounds["eval"].append(task.name)
    folder.write_docs(task.name, "eval", documents.eval)
    folder.write_docs(task.name, "train", {})
    folder.write_manifest(manifest)
    return len(plans)
