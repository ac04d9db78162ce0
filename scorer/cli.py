"""The `scorer` command: `run` (generate through the gateway), `score` (replay the cache), `tasks`.

Exit codes: 0 done; 1 the gateway failed or the cache lacks responses (said
by name and count); 2 bad input (a task file, an override, a run-id, a
manifest), said in one line, with nothing in the run folder changed.

`score` and `tasks` import nothing that can reach a model; only `run` loads
the HTTP client, inside the command.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
import yaml

from scorer.errors import BadInput, GatewayFailure, MissingResponses
from scorer.manifest import LMEVAL_MODES, SEQUENTIAL
from scorer.stderr import DEFAULT_BOOTSTRAP_ITERS
from scorer.store import default_cache_dir

F = TypeVar("F", bound=Callable[..., Any])


def _reported(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BadInput as exc:
            click.echo(f"scorer: error: {exc}", err=True)
            sys.exit(2)
        except (MissingResponses, GatewayFailure) as exc:
            click.echo(f"scorer: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def parse_gen_kwargs(text: str | None) -> dict[str, Any]:
    """``k=v,k2=v2`` with YAML scalars (``max_gen_toks=8,temperature=0``)."""
    if not text:
        return {}
    kwargs = {}
    for part in text.split(","):
        if "=" not in part:
            raise BadInput(f"--gen-kwargs: expected key=value, got {part!r}")
        key, value = part.split("=", 1)
        try:
            kwargs[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise BadInput(f"--gen-kwargs: bad value for {key}: {exc}") from exc
    return kwargs


def parse_overrides(text: str | None) -> dict[str, Any] | None:
    """``--config``: a YAML mapping, inline or in a file, replacing top-level task fields."""
    if not text:
        return None
    path = Path(text)
    source = "--config"
    if len(text) < 4096 and "\n" not in text and path.suffix in (".yaml", ".yml", ".json") and path.exists():
        text, source = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{source}: overrides must be a mapping of task fields, e.g. 'metric_list: [...]'")
    return data


cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The gateway's store (default $REPLAYGATE_HOME/store).",
)
include_option = click.option(
    "--include-path",
    "include_paths",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder of task YAML files (repeatable).",
)


@click.group()
def main() -> None:
    """Score language-model runs kept by the replaygate gateway."""


@main.command("run")
@click.argument("tasks")
@click.option("--model", required=True, help="The model name the gateway serves.")
@click.option("--gateway", required=True, help="The gateway's base URL, e.g. http://127.0.0.1:8000.")
@click.option("--run-id", required=True, help="The run to record under.")
@click.option(
    "--num-fewshot", type=int, default=None, help="Few-shot examples per prompt (overrides the task)."
)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N documents of each task.")
@click.option(
    "--predict-only",
    is_flag=True,
    help="Generate and record the model's answers, do not judge or score (judge later with --judge-only).",
)
@click.option("--skip-train", is_flag=True, help="Send no train round: reuse its cached answers.")
@click.option("--skip-eval", is_flag=True, help="Send only the train round.")
@click.option("--gen-kwargs", default=None, help="Generation kwargs k=v,… overriding the tasks'.")
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--concurrency", type=int, default=8, show_default=True, help="Requests in flight at once.")
@click.option(
    "--lmeval-mode",
    type=click.Choice(LMEVAL_MODES),
    default=SEQUENTIAL,
    show_default=True,
    help="Which lm-eval run to match: sequential = num_concurrent=1 (lm-eval's default; EOS added to "
    "every stop list), concurrent = num_concurrent>1 (stop lists as the task gives them).",
)
@click.option(
    "--bootstrap-iters",
    type=int,
    default=DEFAULT_BOOTSTRAP_ITERS,
    show_default=True,
    help="Bootstrap resamples for corpus metrics' stderr (as lm-eval: at most 100 for bleu/chrf/ter).",
)
@click.option(
    "--batch",
    is_flag=True,
    help="Send each round through the gateway's batch lane (half price upstream); returns once submitted: "
    "run again (or `scorer status RUN`) for progress, then it goes on.",
)
@click.option(
    "--judge-only",
    is_flag=True,
    help="Judge the answers already in the run with each task's judge: as the task file says now "
    "(prompt, kind, model); only judge calls are sent.",
)
@click.option("--judge-model", default=None, help="Judge with this model (one the gateway serves).")
@click.option(
    "--judge-against",
    default=None,
    metavar="RUN_ID",
    help="Pairwise tasks: compare against this run's answers (same cache dir, task and documents) "
    "instead of the reference.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON instead of the table.")
@cache_dir_option
@include_option
@_reported
def run_command(
    tasks: str,
    model: str,
    gateway: str,
    run_id: str,
    num_fewshot: int | None,
    limit: int | None,
    predict_only: bool,
    skip_train: bool,
    skip_eval: bool,
    gen_kwargs: str | None,
    seed: int,
    concurrency: int,
    lmeval_mode: str,
    bootstrap_iters: int,
    batch: bool,
    judge_only: bool,
    judge_model: str | None,
    judge_against: str | None,
    as_json: bool,
    cache_dir: Path | None,
    include_paths: tuple[Path, ...],
) -> None:
    """Generate TASK[,TASK…] through the gateway under --run-id, then score (unless --predict-only)."""
    from scorer.batch_client import BatchPending
    from scorer.groups import resolve_selection
    from scorer.runner import RunOptions, run  # the HTTP client: only this command loads it
    from scorer.store import RunFolder

    if limit is not None and limit < 1:
        raise BadInput("--limit must be at least 1")
    if num_fewshot is not None and num_fewshot < 0:
        raise BadInput("--num-fewshot must be non-negative")
    for given in (run_id, judge_against):  # a bad run-id fails before anything else
        if given is not None:
            RunFolder(cache_dir or default_cache_dir(), given)
    selection = resolve_selection(tasks, list(include_paths))
    options = RunOptions(
        tasks=selection.tasks,
        groups=selection.groups,
        model=model,
        gateway=gateway,
        run_id=run_id,
        cache_dir=cache_dir or default_cache_dir(),
        num_fewshot=num_fewshot,
        limit=limit,
        skip_train=skip_train,
        skip_eval=skip_eval,
        gen_kwargs=parse_gen_kwargs(gen_kwargs),
        seed=seed,
        concurrency=concurrency,
        lmeval_mode=lmeval_mode,
        batch=batch,
        judge_only=judge_only,
        judge_model=judge_model,
        judge_against=judge_against,
        judge=not predict_only,
    )
    try:
        report = asyncio.run(run(options))
    except BatchPending as pending:
        click.echo(f"run {run_id}: batches pending: {pending}", err=True)
        click.echo(
            f"run {run_id}: run the same command again (or `scorer status {run_id}`) to go on", err=True
        )
        return
    sent = ", ".join(f"{k}: {v}" for k, v in report.sent.items()) or "nothing"
    if report.offline:
        click.echo(
            f"run {run_id}: {report.offline}; every answer was in the cache: read {report.read} "
            f"({sent}), sent nothing",
            err=True,
        )
    else:
        click.echo(f"run {run_id}: distinct requests {sent}", err=True)
    if predict_only or skip_eval:
        unjudged = [t.name for t in selection.tasks if t.raw.get("judge")] if predict_only else []
        if unjudged:
            click.echo(
                f"run {run_id}: judge round not sent for {', '.join(unjudged)}; judge with "
                f"`scorer run {tasks} --run-id {run_id} --judge-only …`",
                err=True,
            )
        click.echo(f"run {run_id}: recorded; score it with `scorer score {run_id}`", err=True)
        return
    _score(options.cache_dir, run_id, None, None, bootstrap_iters, as_json)


@main.command("status")
@click.argument("run_id")
@cache_dir_option
@_reported
def status_command(run_id: str, cache_dir: Path | None) -> None:
    """The progress of RUN_ID's batches (`scorer run --batch`), one bar per batch."""
    from scorer.batch_client import batch_status
    from scorer.store import RunFolder

    folder = RunFolder(cache_dir or default_cache_dir(), run_id)
    for line in asyncio.run(batch_status(folder)):
        click.echo(line)


@main.command("score")
@click.argument("run_id")
@click.option(
    "--task", "task_names", multiple=True, help="Score only this task (repeatable, or comma-separated)."
)
@click.option("--config", "config", default=None, help="Task overrides: YAML mapping text or a YAML file.")
@click.option(
    "--bootstrap-iters",
    type=int,
    default=DEFAULT_BOOTSTRAP_ITERS,
    show_default=True,
    help="Bootstrap resamples for corpus metrics' stderr (as lm-eval: at most 100 for bleu/chrf/ter).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON instead of the table.")
@cache_dir_option
@_reported
def score_command(
    run_id: str,
    task_names: tuple[str, ...],
    config: str | None,
    bootstrap_iters: int,
    as_json: bool,
    cache_dir: Path | None,
) -> None:
    """Score RUN_ID from the cache alone: no model is called."""
    names = [n.strip() for item in task_names for n in item.split(",") if n.strip()]
    _score(
        cache_dir or default_cache_dir(),
        run_id,
        names or None,
        parse_overrides(config),
        bootstrap_iters,
        as_json,
    )


def _score(
    cache_dir: Path,
    run_id: str,
    names: list[str] | None,
    overrides: dict[str, Any] | None,
    bootstrap_iters: int,
    as_json: bool,
) -> None:
    from scorer.replay import score_run

    outcome = score_run(cache_dir, run_id, names, overrides, bootstrap_iters)
    if as_json:
        click.echo(orjson.dumps(outcome.document, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(outcome.table)
    for task, rounds in outcome.document.get("rounds", {}).items():
        if rounds["judge"]["requests"]:  # judged: what each round cost, side by side
            click.echo(f"{task}: " + "; ".join(_usage_line(n, u) for n, u in rounds.items()), err=True)
    if outcome.results_path is not None:
        click.echo(f"results: {outcome.results_path}", err=True)


def _usage_line(name: str, usage: dict[str, Any]) -> str:
    """One round's recorded usage in a few words."""
    return (
        f"{name} {usage['requests']} requests ({usage['upstream_calls']} upstream), "
        f"{usage['prompt_tokens']}+{usage['completion_tokens']} tokens, ${usage['cost_usd']:.6f}"
    )


@main.command("tasks")
@include_option
@_reported
def tasks_command(include_paths: tuple[Path, ...]) -> None:
    """The tasks the scorer knows, with their sizes and metrics."""
    from scorer.docs import load_docs
    from scorer.tasks import load_task_file, task_files

    rows = [("task", "type", "eval docs", "metrics", "file")]
    for name, path in sorted(task_files(list(include_paths)).items()):
        try:
            task = load_task_file(path)
            size = str(len(load_docs(task.raw["dataset"], task.raw["eval_split"], f"task {name}")))
            judged = [f"judge: {task.raw['judge']['kind']}"] if task.raw.get("judge") else []
            metrics = ", ".join([m.name for m in task.metrics] + judged)
            rows.append((name, task.output_type, size, metrics, str(path)))
        except BadInput as exc:
            rows.append((name, "?", "?", f"error: {exc}", str(path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])).rstrip())
