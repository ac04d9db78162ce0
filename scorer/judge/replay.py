"""``scorer score``'s side of a judged task: both rounds read back from the cache, no call at all.

The eval round's answers (and a conversation's later turns) are read by key;
the judge requests are rebuilt from them and their verdicts read by key. A
verdict the cache lacks is a :class:`MissingResponses` naming the count,
never a silent score. A pairwise judge against another run
(``judge.against_run``) reads that run's answers the same way, from its own
manifest and records in the same cache dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scorer.errors import BadInput, MissingResponses
from scorer.judge.aggregate import JudgeScores, aggregate
from scorer.judge.config import JudgeConfig, judge_label, judge_of
from scorer.judge.round import JudgeSettings, add_turn, first_answers, judge_plan, judgment_rows, verdicts
from scorer.judge.turns import n_turns, turn_requests
from scorer.manifest import Manifest
from scorer.replay import cached_responses, cached_tokens, documents_of, settings_of, train_answers
from scorer.requests import RequestBuilder
from scorer.rounds import DocPlan, Documents, eval_prompts, plans_of, texts_of, train_prompts
from scorer.store import ResponseReader, RunFolder
from scorer.tasks import TaskConfig, parse_task
from scorer.tokenizer import TableTokenizer

JUDGE_REMEDY = "run `scorer run --judge-only` to judge them"


@dataclass
class Judged:
    """A judged task's numbers and its judgment rows."""

    scores: JudgeScores
    rows: list[bytes]


def judge_settings(
    cache_dir: Path, manifest: Manifest, task: TaskConfig, judge: JudgeConfig, docs: Documents
) -> JudgeSettings:
    """The judge settings a run recorded: the judge's namespace from the manifest, any baseline's answers."""
    namespace = manifest.judge_namespaces.get(judge.model)
    if namespace is None:
        raise BadInput(
            f"run {manifest.run_id!r} has never been judged by {judge.model!r}; "
            "run `scorer run --judge-only` first"
        )
    return JudgeSettings(judge, namespace, manifest.seed, baseline_of(cache_dir, judge, task, docs))


def baseline_of(
    cache_dir: Path, judge: JudgeConfig, task: TaskConfig, docs: Documents
) -> dict[int, list[str]] | None:
    """The answers of the run a pairwise judge compares against (None: it compares against the reference).

    That run must hold ``task`` over the same documents; its answers, every turn, are read from the cache.
    """
    if judge.against_run is None:
        return None
    other = judge.against_run
    folder = RunFolder(cache_dir, other)
    if not folder.has_manifest():
        raise BadInput(f"judge.against_run: no run {other!r} in {cache_dir}")
    manifest = folder.read_manifest()
    entry = manifest.tasks.get(task.name)
    if entry is None:
        raise BadInput(f"judge.against_run: run {other!r} has no task {task.name}")
    theirs = parse_task(entry.config, f"run {other!r}, task {task.name}")
    their_docs = documents_of(folder, manifest, theirs)
    for doc_id, doc in docs.eval.items():
        if their_docs.eval.get(doc_id) != doc:
            raise BadInput(
                f"judge.against_run: run {other!r} did not answer document {doc_id} of {task.name} "
                "as this run has it (other documents, or a smaller --limit)"
            )
    reader = ResponseReader(cache_dir, other)
    try:
        plans = eval_plans_from_cache(reader, manifest, theirs, their_docs)
        answers = answers_from_cache(reader, manifest, theirs, [p for p in plans if p.doc_id in docs.eval])
    finally:
        reader.close()
    return answers


def eval_plans_from_cache(
    reader: ResponseReader, manifest: Manifest, task: TaskConfig, docs: Documents
) -> list[DocPlan]:
    """The eval round's plans, rebuilt with token ids (and train answers) read from the cache."""
    settings = settings_of(manifest)
    table: dict[str, list[int]] = {}
    builder = RequestBuilder(task, settings, TableTokenizer(table))
    answers = None
    if task.fewshot_from_model:
        prompts = train_prompts(task, docs)
        table.update(cached_tokens(reader, settings.namespace, task.name, texts_of(prompts, builder)))
        train = plans_of(prompts, builder)
        answers = train_answers(train, cached_responses(reader, train, task.name))
    prompts = eval_prompts(task, docs, answers)
    table.update(cached_tokens(reader, settings.namespace, task.name, texts_of(prompts, builder)))
    return plans_of(prompts, builder)


def answers_from_cache(
    reader: ResponseReader, manifest: Manifest, task: TaskConfig, plans: list[DocPlan]
) -> dict[int, list[str]]:
    """Each document's answers, turn by turn, read from the cache."""
    answers = first_answers(plans, cached_responses(reader, plans, task.name))
    namespace = settings_of(manifest).namespace
    for turn in range(2, n_turns(task, plans) + 1):
        requests = turn_requests(task, namespace, plans, answers, turn)
        keys = [r.key for r in requests.values()]
        found: dict[str, Any] = reader_many(reader, keys, f"{task.name} turn {turn}")
        add_turn(answers, requests, found)
    return answers


def reader_many(
    reader: ResponseReader, keys: list[str], what: str, remedy: str | None = None
) -> dict[str, Any]:
    """The responses of ``keys``; raises :class:`MissingResponses` counting the ones the cache lacks."""
    import orjson

    found = {k: orjson.loads(raw) for k, raw in reader.get_raw_many(keys).items()}
    missing = [k for k in dict.fromkeys(keys) if k not in found]
    if missing:
        raise MissingResponses(what, missing, *([remedy] if remedy else []))
    return found


def judge_from_cache(
    reader: ResponseReader, manifest: Manifest, task: TaskConfig, docs: Documents
) -> Judged | None:
    """The judge round of ``task`` scored from the cache (None for a task without a judge)."""
    judge = judge_of(task.raw)
    if judge is None:
        return None
    settings = judge_settings(reader.cache_dir, manifest, task, judge, docs)
    plans = eval_plans_from_cache(reader, manifest, task, docs)
    answers = answers_from_cache(reader, manifest, task, plans)
    asks = judge_plan(task, settings, plans, answers)
    found = reader_many(reader, [a.request.key for a in asks], judge_label(task.name), JUDGE_REMEDY)
    judged = verdicts(judge, asks, found)
    scores = aggregate(judge, judged)
    return Judged(scores, judgment_rows(judged, scores))
