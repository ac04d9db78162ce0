"""`scorer score`: rebuild a run's requests from its manifest and score the cached responses.

Nothing imported here can reach a model: request keys are recomputed with the
gateway's canonicaliser (:mod:`cache.keys`), token ids and responses are read
from the cache by key, and a missing one is reported, never fetched. Results
are written only once every selected task has been scored, so a failure
leaves the run folder as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from scorer.errors import BadInput, MissingResponses
from scorer.manifest import Manifest
from scorer.requests import ModelSettings, RequestBuilder
from scorer.results import results_document, table
from scorer.rounds import DocPlan, Documents, eval_plan, texts_needed, train_plan, with_table
from scorer.scoring import TaskScores, score_task
from scorer.store import ResponseReader, RunFolder, jsonl_bytes, write_atomic
from scorer.tasks import TaskConfig, parse_task, with_overrides
from scorer.tokenizer import Tokenizer, tokenize_key


@dataclass
class ScoreOutcome:
    """What `scorer score` produced."""

    document: dict[str, Any]
    table: str
    results_path: Path | None


def settings_of(manifest: Manifest) -> ModelSettings:
    """The model settings a run's requests were built with."""
    return ModelSettings(manifest.model, manifest.upstream_model, manifest.seed, manifest.gen_kwargs or None)


def documents_of(folder: RunFolder, manifest: Manifest, task: TaskConfig) -> Documents:
    """The document snapshots a run stored for ``task``."""
    entry = manifest.tasks[task.name]
    train_split = task.raw["train_split"] or task.raw["eval_split"]
    return Documents(
        folder.read_docs(task.name, "eval"),
        folder.read_docs(task.name, "train"),
        entry.train_pool_size,
        train_split == task.raw["eval_split"],
    )


def cached_tokens(
    reader: ResponseReader, upstream_model: str, task: str, texts: list[str]
) -> dict[str, list[int]]:
    """Token ids of ``texts`` from the cached ``/tokenize`` answers."""
    table: dict[str, list[int]] = {}
    missing = []
    for text in texts:
        key = tokenize_key(upstream_model, text)
        response = reader.get(key)
        if response is None or not isinstance(response.get("tokens"), list):
            missing.append(key)
        else:
            table[text] = response["tokens"]
    if missing:
        raise MissingResponses(task, missing)
    return table


def cached_responses(reader: ResponseReader, plans: list[DocPlan], task: str) -> dict[str, Any]:
    """Every response ``plans`` need, by key; raises :class:`MissingResponses` naming the gaps."""
    responses: dict[str, Any] = {}
    missing = []
    for plan in plans:
        for request in plan.requests:
            if request.key in responses:
                continue
            body = reader.get(request.key)
            if body is None:
                missing.append(request.key)
            else:
                responses[request.key] = body
    if missing:
        raise MissingResponses(task, missing)
    return responses


def train_answers(plans: list[DocPlan], responses: Mapping[str, Any]) -> dict[int, str]:
    """The model's own answers on train documents, as few-shot targets (stripped text)."""
    from scorer.responses import generations

    answers = {}
    for plan in plans:
        texts = generations(responses[plan.requests[0].key])
        answers[plan.doc_id] = texts[0].strip() if texts else ""
    return answers


def plan_from_cache(
    reader: ResponseReader, manifest: Manifest, task: TaskConfig, docs: Documents
) -> tuple[list[DocPlan], dict[str, Any]]:
    """The eval round's plans and responses, everything read from the cache."""
    settings = settings_of(manifest)

    def tokens(texts: list[str]) -> dict[str, list[int]]:
        return cached_tokens(reader, settings.upstream_model, task.name, texts)

    def builder(tok: Tokenizer) -> RequestBuilder:
        return RequestBuilder(task, settings, tok)

    answers = None
    if task.fewshot_from_model:
        build_train: Callable[[Tokenizer], list[DocPlan]] = lambda tok: train_plan(task, docs, builder(tok))  # noqa: E731
        train = with_table(build_train, tokens(texts_needed(build_train)))
        answers = train_answers(train, cached_responses(reader, train, task.name))
    build_eval: Callable[[Tokenizer], list[DocPlan]] = lambda tok: eval_plan(  # noqa: E731
        task, docs, builder(tok), manifest.seed, answers
    )
    plans = with_table(build_eval, tokens(texts_needed(build_eval)))
    return plans, cached_responses(reader, plans, task.name)


def overrides_tag(overrides: Mapping[str, Any]) -> str:
    """A short stable name for a set of overrides (results-<tag>.json)."""
    return hashlib.sha256(orjson.dumps(overrides, option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]


def select_tasks(
    manifest: Manifest, names: list[str] | None, overrides: Mapping[str, Any] | None
) -> list[TaskConfig]:
    """The manifest's tasks (all, or those named), with ``overrides`` applied and validated."""
    if names:
        unknown = [n for n in names if n not in manifest.tasks]
        if unknown:
            have = ", ".join(manifest.tasks)
            raise BadInput(f"run {manifest.run_id!r} has no task {', '.join(unknown)} (it has {have})")
    chosen = names or list(manifest.tasks)
    tasks = []
    for name in chosen:
        task = parse_task(manifest.tasks[name].config, f"manifest of run {manifest.run_id} (task {name})")
        if overrides:
            task = with_overrides(task, overrides, f"--config for task {name}")
        tasks.append(task)
    return tasks


def score_run(
    cache_dir: Path,
    run_id: str,
    task_names: list[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    bootstrap_iters: int = 1000,
    write: bool = True,
) -> ScoreOutcome:
    """Score run ``run_id`` from the cache alone and (by default) write its results.

    Raises:
        BadInput: unknown run-id or task, bad manifest, bad overrides.
        MissingResponses: the cache lacks some response; nothing is written.
    """
    folder = RunFolder(cache_dir, run_id)
    manifest = folder.read_manifest()
    tasks = select_tasks(manifest, task_names, overrides)
    reader = ResponseReader(cache_dir, run_id)
    try:
        scores: list[TaskScores] = []
        for task in tasks:
            plans, responses = plan_from_cache(reader, manifest, task, documents_of(folder, manifest, task))
            scores.append(score_task(task, plans, responses, bootstrap_iters))
    finally:
        reader.close()
    document = results_document(scores, manifest, {t: e.n_eval_total for t, e in manifest.tasks.items()})
    path = None
    if write:
        suffix = f"-{overrides_tag(overrides)}" if overrides else ""
        for s in scores:
            write_atomic(folder.scorer / f"samples_{s.task.name}{suffix}.jsonl", jsonl_bytes(s.rows))
        path = folder.scorer / f"results{suffix}.json"
        write_atomic(path, orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return ScoreOutcome(document, table(document), path)
