"""`scorer score`: rebuild a run's requests from its manifest and score the cached responses.

Nothing imported here can reach a model: request keys are recomputed with the
gateway's canonicaliser (:mod:`cache.keys`), token ids and responses are read
from the cache by key (in bulk, a batch of documents at a time), and a missing
one is reported, never fetched. Results
are written only once every selected task has been scored, so a failure
leaves the run folder as it was.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cache.atomic import write_atomic
from scorer.errors import BadInput, MissingResponses
from scorer.manifest import SEQUENTIAL, Manifest
from scorer.requests import ModelSettings, RequestBuilder
from scorer.results import results_document, table
from scorer.rounds import DocPlan, Documents, eval_prompts, plans_of, texts_of, train_prompts
from scorer.scoring import TaskScorer, TaskScores
from scorer.stderr import DEFAULT_BOOTSTRAP_ITERS
from scorer.store import ResponseReader, RunFolder
from scorer.tasks import TaskConfig, parse_task, with_overrides
from scorer.tokenizer import TableTokenizer, prefix_texts, prefix_token, tokenize_key, tokenizer_info_key

# Documents planned and scored together: big enough for bulk reads to pay, small enough to bound memory.
BATCH_DOCS = 4096


@dataclass
class ScoreOutcome:
    """What `scorer score` produced."""

    document: dict[str, Any]
    table: str
    results_path: Path | None


def settings_of(manifest: Manifest) -> ModelSettings:
    """The model settings a run's requests were built with."""
    return ModelSettings(
        manifest.model,
        manifest.cache_namespace or manifest.upstream_model,
        manifest.seed,
        manifest.gen_kwargs or None,
        manifest.eos_string if manifest.lmeval_mode == SEQUENTIAL else None,
    )


def documents_of(folder: RunFolder, manifest: Manifest, task: TaskConfig) -> Documents:
    """The document snapshots a run stored for ``task``."""
    entry = manifest.tasks[task.name]
    if task.num_fewshot > 0 and entry.n_eval and len(entry.shots) != entry.n_eval:
        raise BadInput(
            f"run {manifest.run_id!r}, task {task.name}: the manifest does not record which few-shot "
            "examples each document showed (made by an older scorer, or --config changed num_fewshot); "
            "run it again with `scorer run`"
        )
    return Documents(
        folder.read_docs(task.name, "eval"),
        folder.read_docs(task.name, "train"),
        entry.train_pool_size,
        dict(enumerate(entry.shots)),
    )


def cached_tokens(
    reader: ResponseReader, namespace: str, task: str, texts: list[str]
) -> dict[str, list[int]]:
    """Token ids of ``texts`` from the cached ``/tokenize`` answers; raises :class:`MissingResponses`."""
    missing: list[str] = []
    table = _tokens(reader, namespace, texts, missing)
    if missing:
        raise MissingResponses(task, missing)
    return table


def _tokens(
    reader: ResponseReader, namespace: str, texts: list[str], missing: list[str]
) -> dict[str, list[int]]:
    """Token ids of those ``texts`` the cache has; the keys of the others are appended to ``missing``."""
    keys = {text: tokenize_key(namespace, text) for text in texts}
    bodies = reader.get_raw_many(keys.values())
    table: dict[str, list[int]] = {}
    for text, key in keys.items():
        raw = bodies.get(key)
        tokens = orjson.loads(raw).get("tokens") if raw is not None else None
        if isinstance(tokens, list):
            table[text] = tokens
        else:
            missing.append(key)
    return table


def cached_responses(reader: ResponseReader, plans: list[DocPlan], task: str) -> dict[str, Any]:
    """Every response ``plans`` need, by key; raises :class:`MissingResponses` naming the gaps."""
    keys = [r.key for plan in plans for r in plan.requests]
    responses = {key: orjson.loads(raw) for key, raw in reader.get_raw_many(keys).items()}
    missing = [k for k in dict.fromkeys(keys) if k not in responses]
    if missing:
        raise MissingResponses(task, missing)
    return responses


def cached_prefix_token(reader: ResponseReader, namespace: str, task: str) -> int | None:
    """The rolling-loglikelihood prefix token, from the cached ``/tokenizer_info`` and ``/tokenize``."""
    key = tokenizer_info_key(namespace)
    raw = reader.get_raw(key)
    if raw is None:
        raise MissingResponses(task, [key])
    info = orjson.loads(raw)
    table: dict[str, list[int]] = {}
    while texts := prefix_texts(info, table):
        table.update(cached_tokens(reader, namespace, task, texts))
    return prefix_token(info, TableTokenizer(table))


def train_answers(plans: list[DocPlan], responses: Mapping[str, Any]) -> dict[int, str]:
    """The model's own answers on train documents, as few-shot targets (stripped text)."""
    from scorer.responses import generations

    answers = {}
    for plan in plans:
        texts = generations(responses[plan.requests[0].key])
        answers[plan.doc_id] = texts[0].strip() if texts else ""
    return answers


@dataclass
class BatchScores:
    """What scoring one batch of documents gave: rows and metric values, or the keys it lacks."""

    n_samples: int
    lines: list[bytes]
    values: dict[tuple[str, str], list[Any]]
    missing: list[str]


class BatchScorer:
    """Plans and scores batches of a task's evaluated documents; one per task, copied into each worker.

    Each batch is planned once: its prompts are rendered, the texts they
    tokenize read from the cache in bulk, its requests built and their
    responses read in bulk, then scored and dropped.
    """

    def __init__(
        self,
        reader: ResponseReader,
        manifest: Manifest,
        task: TaskConfig,
        docs: Documents,
        prefix: int | None,
        answers: dict[int, str] | None,
    ) -> None:
        self.reader = reader
        self.manifest = manifest
        self.task = task
        self.docs = docs
        self.answers = answers
        self.upstream = settings_of(manifest).namespace
        self.table: dict[str, list[int]] = {}
        self.builder = RequestBuilder(task, settings_of(manifest), TableTokenizer(self.table), prefix)

    def __call__(self, doc_ids: list[int]) -> BatchScores:
        """Score the documents ``doc_ids``; once one lacks a response, the rest are only checked."""
        reader, builder, table = self.reader, self.builder, self.table
        missing: list[str] = []
        prompts = eval_prompts(self.task, self.docs, self.answers, doc_ids)
        table.clear()
        table.update(_tokens(reader, self.upstream, texts_of(prompts, builder), missing))
        if missing:  # only prompts whose every text has token ids can be built
            prompts = [p for p in prompts if all(t in table for a in p.asks for t in builder.texts(a))]
        plans = plans_of(prompts, builder)
        keys = [r.key for plan in plans for r in plan.requests]
        bodies = reader.get_raw_many(keys)
        responses = {key: orjson.loads(raw) for key, raw in bodies.items()}
        scorer = TaskScorer(self.task)
        for plan in plans:
            gaps = [r.key for r in plan.requests if r.key not in responses]
            if gaps:
                missing.extend(gaps)
            elif not missing:  # once something is missing, nothing is scored: only counted
                scorer.add(plan, responses)
        return BatchScores(scorer.n_samples, scorer.lines, scorer.values, missing)


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the duration (reference counting still frees).

    Scoring allocates millions of short-lived, acyclic containers; each few
    hundred of them trigger a collection, and the oldest generation's
    re-traverse every document of the round: ~15% of `scorer score`'s CPU.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# The batch scorer a worker process runs: inherited from the parent by fork, with a reader of its own.
_WORKER: BatchScorer | None = None


def _start_worker(batch_scorer: BatchScorer) -> None:
    global _WORKER
    reader = batch_scorer.reader
    batch_scorer.reader = ResponseReader(reader.cache_dir, reader.run_id)  # never share a SQLite handle
    _WORKER = batch_scorer


def _work(doc_ids: list[int]) -> BatchScores:
    assert _WORKER is not None
    return _WORKER(doc_ids)


def default_workers() -> int:
    """Processes `scorer score` spreads a task's batches over: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _batch_scores(batch_scorer: BatchScorer, batches: list[list[int]], workers: int) -> Iterator[BatchScores]:
    """Each batch's scores, in batch order: in this process, or over ``workers`` forked ones."""
    workers = min(workers, len(batches))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(batch_scorer, batches)
        return
    # fork: workers inherit the task, documents and train answers without pickling them
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, _start_worker, (batch_scorer,)) as pool:
        yield from pool.imap(_work, batches)


def score_from_cache(
    reader: ResponseReader,
    manifest: Manifest,
    task: TaskConfig,
    docs: Documents,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    batch_docs: int = BATCH_DOCS,
    workers: int | None = None,
) -> TaskScores:
    """Rebuild the eval round's requests and score their cached responses, ``batch_docs`` documents at a time.

    Memory holds a few batches of responses, never the round's. Batches are
    scored by ``workers`` processes (default: one per usable CPU) and
    gathered in order, so the rows, the values and their standard errors are
    those of scoring them one by one.

    Raises:
        MissingResponses: after every batch, naming every response (or token ids) the cache lacks.
    """
    upstream = settings_of(manifest).namespace
    prefix = None
    if task.output_type == "loglikelihood_rolling":
        prefix = cached_prefix_token(reader, upstream, task.name)
    answers = None
    if task.fewshot_from_model:
        table: dict[str, list[int]] = {}
        builder = RequestBuilder(task, settings_of(manifest), TableTokenizer(table), prefix)
        prompts = train_prompts(task, docs)
        table.update(cached_tokens(reader, upstream, task.name, texts_of(prompts, builder)))
        train = plans_of(prompts, builder)
        answers = train_answers(train, cached_responses(reader, train, task.name))
    batch_scorer = BatchScorer(reader, manifest, task, docs, prefix, answers)
    doc_ids = sorted(docs.eval)
    batches = [doc_ids[start : start + batch_docs] for start in range(0, len(doc_ids), batch_docs)]
    missing: list[str] = []
    scorer = TaskScorer(task)
    for part in _batch_scores(batch_scorer, batches, default_workers() if workers is None else workers):
        missing.extend(part.missing)
        if not missing:
            scorer.absorb(part.n_samples, part.lines, part.values)
    if missing:
        raise MissingResponses(task.name, list(dict.fromkeys(missing)))
    return scorer.finish(bootstrap_iters)


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
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    write: bool = True,
) -> ScoreOutcome:
    """Score run ``run_id`` from the cache alone and (by default) write its results.

    Raises:
        BadInput: unknown run-id or task, bad manifest, bad overrides.
        MissingResponses: the cache lacks some response; nothing is written.
    """
    started = time.time()
    folder = RunFolder(cache_dir, run_id)
    manifest = folder.read_manifest()
    tasks = select_tasks(manifest, task_names, overrides)
    from scorer.judge.replay import judge_from_cache
    from scorer.usage import round_usage

    reader = ResponseReader(cache_dir, run_id)
    judgments: dict[str, list[bytes]] = {}
    try:
        scores: list[TaskScores] = []
        with no_cycle_collection():  # forked workers inherit the pause
            for task in tasks:
                docs = documents_of(folder, manifest, task)
                scores.append(score_from_cache(reader, manifest, task, docs, bootstrap_iters))
                judged = judge_from_cache(reader, manifest, task, docs)
                if judged is not None:
                    for name, value in judged.scores.values.items():
                        scores[-1].values[(name, "none")] = value
                    judgments[task.name] = judged.rows
    finally:
        reader.close()
    totals = {t: e.n_eval_total for t, e in manifest.tasks.items()}
    document = results_document(scores, manifest, totals, bootstrap_iters, started)
    document["rounds"] = round_usage(cache_dir, run_id, [s.task.name for s in scores])
    path = None
    if write:
        suffix = f"-{overrides_tag(overrides)}" if overrides else ""
        for s in scores:
            write_atomic(folder.scorer / f"samples_{s.task.name}{suffix}.jsonl", b"".join(s.lines))
        for name, rows in judgments.items():
            write_atomic(folder.scorer / f"judgments_{name}{suffix}.jsonl", b"".join(rows))
        path = folder.scorer / f"results{suffix}.json"
        write_atomic(path, orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return ScoreOutcome(document, table(document), path)
