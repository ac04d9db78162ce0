"""`scorer run`: build each task's train and eval rounds, send them through the gateway, keep the manifest.

Order of effects: every task is loaded and validated, and the gateway asked
which upstream serves the model, before anything is written; then the
manifest and document snapshots are stored; then the rounds are sent. A
round sends each distinct request once (identical prompts share one request),
and a second run of the same settings finds every answer in the gateway's
cache. Scoring afterwards goes through `scorer score`'s own path, reading
the cache, so a run's numbers and a later re-score's are the same by
construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scorer.batch_client import BatchGatewayClient, BatchLedger
from scorer.cache_client import CacheClient
from scorer.client import GatewayClient
from scorer.docs import load_docs
from scorer.errors import BadInput, GatewayUnreachable
from scorer.groups import GroupConfig
from scorer.helpers import apply_process_docs
from scorer.judge.config import judge_of
from scorer.judge.replay import answers_from_cache, baseline_of, eval_plans_from_cache
from scorer.judge.round import JudgeSettings
from scorer.judge.run import judge_model_of, send_judge, send_turns, with_judge
from scorer.manifest import SEQUENTIAL, Manifest, TaskEntry
from scorer.prompts import draw_shots
from scorer.replay import cached_responses, cached_tokens, documents_of, settings_of, train_answers
from scorer.requests import RequestBuilder
from scorer.rounds import DocPlan, DocPrompt, Documents, eval_prompts, plans_of, texts_of, train_prompts
from scorer.store import ResponseReader, RunFolder
from scorer.tasks import TaskConfig, parse_task
from scorer.tokenizer import TableTokenizer, eos_string, prefix_texts, prefix_token


@dataclass
class RunOptions:
    """Everything `scorer run` was asked for."""

    tasks: list[TaskConfig]
    model: str
    gateway: str
    run_id: str
    cache_dir: Path
    num_fewshot: int | None = None
    limit: int | None = None
    skip_train: bool = False
    skip_eval: bool = False
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 1234
    concurrency: int = 8
    lmeval_mode: str = SEQUENTIAL  # which lm-eval path's stop sequences to match (see scorer.manifest)
    groups: dict[str, GroupConfig] = field(default_factory=dict)  # lm-eval groups over ``tasks``
    batch: bool = False  # send the rounds through the gateway's batch lane (scorer.batch_client)
    judge_only: bool = False  # judge the answers already in the run: only judge calls are made
    judge_model: str | None = None  # --judge-model: judge every judged task with this model
    judge_against: str | None = None  # --judge-against: pairwise tasks judged against this run's answers
    judge: bool = True  # send the judge round (--predict-only: answers only; judge later with --judge-only)


@dataclass
class RunReport:
    """What a run sent: distinct requests per task and round."""

    sent: dict[str, int] = field(default_factory=dict)
    offline: str = ""  # why the gateway was not used (then every answer was read from the cache)
    read: int = 0  # answers read from the cache when offline


def _with_fewshot(task: TaskConfig, num: int | None) -> TaskConfig:
    """``task`` with ``num`` examples (``--num-fewshot``), unless its file pins 0 as lm-eval honours it."""
    if num is None or task.raw["fewshot"].get("pinned"):
        return task
    raw = {**task.raw, "fewshot": {**task.raw["fewshot"], "num": num}}
    return parse_task(raw, f"task {task.name} with --num-fewshot {num}")


def fewshot_pool(task: TaskConfig, eval_all: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents few-shot examples are drawn from: ``fewshot_config.samples``, else the train split."""
    samples = task.raw["fewshot"].get("samples")
    if samples is not None:
        return list(samples)
    split = task.raw["train_split"] or task.raw["eval_split"]
    if split == task.raw["eval_split"]:
        return eval_all
    return split_docs(task, split)


def split_docs(task: TaskConfig, split: str) -> list[dict[str, Any]]:
    """A split's documents, through the task's ``process_docs`` helper when it has one (as lm-eval)."""
    where = f"task {task.name}"
    return apply_process_docs(
        task.raw.get("process_docs"), load_docs(task.raw["dataset"], split, where), where
    )


def gather_documents(task: TaskConfig, limit: int | None, seed: int) -> tuple[Documents, int]:
    """The evaluated documents (first ``limit``), the examples each shows, and the split's size."""
    eval_all = split_docs(task, task.raw["eval_split"])
    n_total = len(eval_all)
    chosen = eval_all if limit is None else eval_all[:limit]
    train: dict[int, dict[str, Any]] = {}
    shots: dict[int, list[int]] = {}
    pool_size = 0
    if task.num_fewshot > 0:
        pool = fewshot_pool(task, eval_all)
        pool_size = len(pool)
        shots = dict(enumerate(draw_shots(task, chosen, pool, seed)))
        train = {i: pool[i] for picked in shots.values() for i in picked}
    return Documents(dict(enumerate(chosen)), train, pool_size, shots), n_total


def _manifest(
    folder: RunFolder, options: RunOptions, upstream: str, namespace: str, eos: str | None
) -> Manifest:
    fresh = Manifest(
        options.run_id,
        options.model,
        upstream,
        options.gateway,
        options.seed,
        options.limit,
        options.gen_kwargs,
        cache_namespace=namespace,
        lmeval_mode=options.lmeval_mode,
        eos_string=eos,
    )
    if not folder.has_manifest():
        return fresh
    old = folder.read_manifest()
    same = (old.model, old.cache_namespace, old.seed, old.gen_kwargs, old.lmeval_mode) == (
        options.model,
        namespace,
        options.seed,
        options.gen_kwargs,
        options.lmeval_mode,
    )
    if not same:
        raise BadInput(
            f"run {options.run_id!r} was made with model {old.model}, seed {old.seed}, gen kwargs "
            f"{old.gen_kwargs}, --lmeval-mode {old.lmeval_mode}; use another --run-id for other settings"
        )
    old.eos_string = old.eos_string or eos
    old.gateway, old.limit = options.gateway, options.limit
    return old


async def run(options: RunOptions) -> RunReport:
    """Send the rounds of every task and store the manifest. Scoring is the caller's next step."""
    folder = RunFolder(options.cache_dir, options.run_id)
    if options.judge_only:
        return await judge_only(options, folder)
    tasks = [
        with_judge(_with_fewshot(t, options.num_fewshot), options.judge_model, options.judge_against)
        for t in options.tasks
    ]
    prepared = [(t, *gather_documents(t, options.limit, options.seed)) for t in tasks]
    baselines = {  # read before anything is sent: a baseline that does not fit stops the run here
        t.name: baseline_of(options.cache_dir, judge, t, docs)
        for t, docs, _ in prepared
        if options.judge and (judge := judge_of(t.raw)) is not None
    }
    report = RunReport()
    live_client = (
        BatchGatewayClient(options.gateway, options.run_id, BatchLedger(folder.scorer), options.concurrency)
        if options.batch
        else GatewayClient(options.gateway, options.run_id, options.concurrency)
    )
    async with live_client as live:
        client: GatewayClient | CacheClient = live
        try:
            upstream_model, upstream = await live.model_names(options.model)
        except GatewayUnreachable as exc:  # everything may be cached already: read it as `scorer score` does
            manifest = folder.read_manifest() if folder.has_manifest() else None
            reader = ResponseReader(options.cache_dir, options.run_id)
            client = CacheClient(reader, manifest, exc)
            report.offline = str(exc)
            try:
                upstream_model, upstream = await client.model_names(options.model)
                await _rounds(
                    client, options, folder, tasks, prepared, baselines, upstream_model, upstream, report
                )
            finally:
                reader.close()
            report.read = client.read
            return report
        await _rounds(client, options, folder, tasks, prepared, baselines, upstream_model, upstream, report)
    return report


async def _rounds(
    client: GatewayClient | CacheClient,
    options: RunOptions,
    folder: RunFolder,
    tasks: list[TaskConfig],
    prepared: list[tuple[TaskConfig, Documents, int]],
    baselines: dict[str, dict[int, list[str]] | None],
    upstream_model: str,
    upstream: str,
    report: RunReport,
) -> None:
    """Store the manifest and snapshots, then send (or read) each task's train and eval rounds."""
    eos = None
    if options.lmeval_mode == SEQUENTIAL and any(_adds_eos(t) for t in tasks):
        eos = eos_string(await client.tokenizer_info(options.model, upstream))
    manifest = _manifest(folder, options, upstream_model, upstream, eos)
    settings = settings_of(manifest)
    for model in {m for t in tasks if (m := judge_model_of(t)) is not None}:
        manifest.judge_namespaces[model] = (await client.model_names(model))[1]
    for task, docs, n_total in prepared:
        shots = [docs.shots[i] for i in sorted(docs.shots)]
        entry = TaskEntry(task.raw, len(docs.eval), n_total, docs.train_pool_size, shots)
        manifest.tasks[task.name] = entry
        folder.write_docs(task.name, "eval", docs.eval)
        folder.write_docs(task.name, "train", docs.train)
    manifest.groups.update({name: group.to_dict() for name, group in options.groups.items()})
    folder.write_manifest(manifest)

    for task, docs, _ in prepared:
        table: dict[str, list[int]] = {}
        prefix = None
        if task.output_type == "loglikelihood_rolling":
            info = await client.tokenizer_info(options.model, upstream)
            while texts := prefix_texts(info, table):
                table.update(await client.tokenize(options.model, upstream, texts))
            prefix = prefix_token(info, TableTokenizer(table))
        builder = RequestBuilder(task, settings, TableTokenizer(table), prefix)

        async def planned(
            prompts: list[DocPrompt],
            builder: RequestBuilder = builder,
            table: dict[str, list[int]] = table,
        ) -> list[DocPlan]:
            texts = [t for t in texts_of(prompts, builder) if t not in table]
            if texts:
                table.update(await client.tokenize(options.model, upstream, texts))
            return plans_of(prompts, builder)

        answers = None
        if task.fewshot_from_model:
            prompts = train_prompts(task, docs)
            if options.skip_train:  # the train answers must already be in the cache: read, never send
                reader = ResponseReader(options.cache_dir, options.run_id)
                try:
                    table.update(cached_tokens(reader, upstream, task.name, texts_of(prompts, builder)))
                    train = plans_of(prompts, builder)
                    responses = cached_responses(reader, train, task.name)
                finally:
                    reader.close()
            else:
                train = await planned(prompts)
                responses = await client.send((r for p in train for r in p.requests), f"{task.name} train")
                report.sent[f"{task.name}/train"] = len(responses)
                _mark(manifest, "train", task.name)
            answers = train_answers(train, responses)
        if options.skip_eval:
            continue
        plans = await planned(eval_prompts(task, docs, answers))
        responses = await client.send(
            (r for p in plans for r in p.requests), f"{task.name} eval", label=task.name
        )
        report.sent[f"{task.name}/eval"] = len(responses)
        _mark(manifest, "eval", task.name)
        judge = judge_of(task.raw)
        if judge is not None or task.raw.get("turns"):
            conversation = await send_turns(client, task, settings.namespace, plans, responses, report.sent)
            if judge is not None and options.judge:
                judge_settings = JudgeSettings(
                    judge, manifest.judge_namespaces[judge.model], manifest.seed, baselines[task.name]
                )
                await send_judge(client, task, judge_settings, plans, conversation, report.sent)
                _mark(manifest, "judge", task.name)
    folder.write_manifest(manifest)


async def judge_only(options: RunOptions, folder: RunFolder) -> RunReport:
    """Judge the answers a run already holds (read from the cache) with each task's judge as given now.

    The run's generation config, documents and answers are its own; only the
    task file's ``judge:`` section (and ``--judge-model``) is taken from
    ``options``, and stored in the manifest, so `scorer score` replays this judge.
    Only judge calls are sent; an answer the cache lacks ends the run, sending nothing.
    """
    manifest = folder.read_manifest()
    report = RunReport()
    chosen = []
    for given in options.tasks:
        if given.name not in manifest.tasks:
            raise BadInput(f"--judge-only: run {options.run_id!r} has no task {given.name}")
        if not given.raw.get("judge"):
            raise BadInput(f"--judge-only: task {given.name} has no judge: section")
        stored = manifest.tasks[given.name].config
        task = with_judge(
            parse_task(
                {**stored, "judge": given.raw["judge"]}, f"task {given.name} (judge from {given.name})"
            ),
            options.judge_model,
            options.judge_against,
        )
        chosen.append(task)
    reader = ResponseReader(options.cache_dir, options.run_id)
    try:
        conversations = []
        for task in chosen:  # every answer first: a missing one sends nothing at all
            docs = documents_of(folder, manifest, task)
            plans = eval_plans_from_cache(reader, manifest, task, docs)
            answers = answers_from_cache(reader, manifest, task, plans)
            judge = judge_of(task.raw)
            assert judge is not None
            conversations.append(
                (task, judge, plans, answers, baseline_of(options.cache_dir, judge, task, docs))
            )
    finally:
        reader.close()
    async with GatewayClient(options.gateway, options.run_id, options.concurrency) as client:
        for task, judge, plans, answers, baseline in conversations:
            namespace = manifest.judge_namespaces[judge.model] = (await client.model_names(judge.model))[1]
            settings = JudgeSettings(judge, namespace, manifest.seed, baseline)
            await send_judge(client, task, settings, plans, answers, report.sent)
            manifest.tasks[task.name].config = task.raw
            _mark(manifest, "judge", task.name)
    folder.write_manifest(manifest)
    return report


def _adds_eos(task: TaskConfig) -> bool:
    """Whether lm-eval's sequential path adds EOS to this task's stop lists (completions generation)."""
    return task.output_type == "generate_until" and task.raw["api"] == "completions"


def _mark(manifest: Manifest, round_name: str, task: str) -> None:
    done = manifest.rounds.setdefault(round_name, [])
    if task not in done:
        done.append(task)
