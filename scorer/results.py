"""Results in lm-evaluation-harness's JSON schema, per-sample JSONL, and the terminal table.

The JSON has lm-eval 0.4's top-level keys with its shapes: ``results`` (per
task ``name``, ``alias``, ``sample_len`` and ``metric,filter`` keys with
``metric_stderr,filter`` beside them), ``group_subtasks``, ``configs``,
``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``, ``config``
(``model_args`` a mapping, ``bootstrap_iters``, the seeds), ``git_hash``,
``date``, the environment keys ``pretty_env_info``, ``transformers_version``,
``lm_eval_version``, ``upper_git_hash``, and ``total_evaluation_time_seconds``
(a string, as its tracker writes it); so tools that read lm-eval's output
read ours. The scorer's own extras sit beside them in ``config``.
"""

from __future__ import annotations

import platform
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from scorer.groups import GroupConfig, group_results
from scorer.judge.aggregate import judge_directions
from scorer.manifest import SCORER_VERSION, Manifest
from scorer.scoring import TaskScores
from scorer.stderr import DEFAULT_BOOTSTRAP_ITERS

ARROWS = {True: "↑", False: "↓", None: " "}  # lm-eval's table; None: a count with no better direction


def _git_hash(cwd: str | None = None) -> str | None:
    """``git describe --always`` of the working directory, as lm-eval records it (None outside a repo)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "N/A"


def environment() -> dict[str, Any]:
    """lm-eval's environment keys (``add_env_info``), filled without importing torch or transformers."""
    return {
        "pretty_env_info": f"Python {platform.python_version()} on {platform.platform()} (replaygate scorer)",
        "transformers_version": _version("transformers"),
        "lm_eval_version": _version("lm_eval"),
        "upper_git_hash": _git_hash(".."),
    }


def results_document(
    scores: list[TaskScores],
    manifest: Manifest,
    n_total: dict[str, int],
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    started: float | None = None,
) -> dict[str, Any]:
    """The lm-eval-schema results of ``scores``; ``started`` (a ``time.time()``) dates the evaluation."""
    start = time.time() if started is None else started
    results: dict[str, Any] = {}
    for s in scores:
        entry: dict[str, Any] = {"name": s.task.name, "alias": s.task.alias, "sample_len": s.n_samples}
        for (metric, filter_name), (value, stderr) in s.values.items():
            entry[f"{metric},{filter_name}"] = value
            entry[f"{metric}_stderr,{filter_name}"] = stderr
        results[s.task.name] = entry
    groups = {name: GroupConfig.from_dict(g) for name, g in manifest.groups.items()}
    aggregated = group_results(groups, results)
    results.update(aggregated)
    n_shot = {s.task.name: s.task.num_fewshot for s in scores}
    higher: dict[str, dict[str, bool | None]] = {
        s.task.name: {
            **{m.name: m.higher_is_better for m in s.task.metrics},
            **judge_directions(metric for metric, _ in s.values),
        }
        for s in scores
    }
    _propagate(groups, aggregated, n_shot, higher)
    return {
        "results": results,
        **({"groups": {n: e for n, e in aggregated.items() if groups[n].aggregate}} if aggregated else {}),
        "group_subtasks": {
            **{s.task.name: [] for s in scores},
            **{n: list(groups[n].children) for n in aggregated},
        },
        "configs": {s.task.name: s.task.raw for s in scores},
        "versions": {
            **{s.task.name: s.task.version for s in scores},
            **{n: str(groups[n].version) for n in aggregated},
        },
        "n-shot": n_shot,
        "higher_is_better": higher,
        "n-samples": {
            s.task.name: {"original": n_total.get(s.task.name, s.n_samples), "effective": s.n_samples}
            for s in scores
        },
        "config": {
            "model": "replaygate-scorer",
            "model_args": {
                "model": manifest.model,
                "upstream_model": manifest.upstream_model,
                "cache_namespace": manifest.cache_namespace,
                "seed": manifest.seed,
            },
            "model_name": manifest.model,
            "batch_size": 1,
            "batch_sizes": [],
            "device": None,
            "use_cache": None,
            "limit": manifest.limit,
            "bootstrap_iters": bootstrap_iters,
            "gen_kwargs": manifest.gen_kwargs,
            "random_seed": manifest.seed,
            "numpy_seed": manifest.seed,
            "torch_seed": manifest.seed,
            "fewshot_seed": manifest.seed,
            "run_id": manifest.run_id,
            "lmeval_mode": manifest.lmeval_mode,
            "scorer_version": SCORER_VERSION,
        },
        "git_hash": _git_hash(),
        "date": start,
        **environment(),
        "total_evaluation_time_seconds": str(time.time() - start),
    }


def _propagate(
    groups: dict[str, GroupConfig],
    aggregated: dict[str, Any],
    n_shot: dict[str, int],
    higher: dict[str, dict[str, bool | None]],
) -> None:
    """A group's n-shot (when its children agree) and metric directions, as lm-eval propagates them."""
    for name in aggregated:
        shots = {n_shot[c] for c in groups[name].children if c in n_shot}
        if len(shots) == 1:
            n_shot[name] = shots.pop()
        directions: dict[str, bool | None] = {}
        for child in groups[name].children:
            for metric, better in higher.get(child, {}).items():
                if metric not in directions:
                    directions[metric] = better
                elif directions[metric] is not None and directions[metric] != better:
                    directions[metric] = None
        if directions:
            higher[name] = directions


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(document: dict[str, Any]) -> str:
    """A Markdown table of ``document``'s results, as lm-eval prints one."""
    header = "|Tasks|Version|Filter|n-shot|Metric| |Value| |Stderr|"
    lines = [header, "|-----|------:|------|-----:|------|---|----:|---|-----:|"]
    for task, entry in document["results"].items():
        version = document["versions"].get(task, "")
        shots = document["n-shot"].get(task, "")
        better = document["higher_is_better"].get(task, {})
        for key, value in entry.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filter_name = key.split(",", 1)
            stderr = entry.get(f"{metric}_stderr,{filter_name}", "N/A")
            arrow = ARROWS[better.get(metric, True)]
            lines.append(
                f"|{task}|{version}|{filter_name}|{shots}|{metric}|{arrow}|{_fmt(value)}|±|{_fmt(stderr)}|"
            )
    return "\n".join(lines)
