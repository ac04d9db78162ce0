"""Results in lm-evaluation-harness's JSON schema, per-sample JSONL, and the terminal table.

The JSON has ``results`` (per task, ``metric,filter`` keys with
``metric_stderr,filter`` beside them), ``group_subtasks``, ``configs``,
``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``, ``config`` and
``date``, so tools that read lm-eval's output read ours.
"""

from __future__ import annotations

import time
from typing import Any

from scorer.manifest import SCORER_VERSION, Manifest
from scorer.scoring import TaskScores


def results_document(scores: list[TaskScores], manifest: Manifest, n_total: dict[str, int]) -> dict[str, Any]:
    """The lm-eval-schema results of ``scores``."""
    results: dict[str, Any] = {}
    for s in scores:
        entry: dict[str, Any] = {"alias": s.task.name}
        for (metric, filter_name), (value, stderr) in s.values.items():
            entry[f"{metric},{filter_name}"] = value
            entry[f"{metric}_stderr,{filter_name}"] = stderr
        results[s.task.name] = entry
    return {
        "results": results,
        "group_subtasks": {s.task.name: [] for s in scores},
        "configs": {s.task.name: s.task.raw for s in scores},
        "versions": {s.task.name: s.task.version for s in scores},
        "n-shot": {s.task.name: s.task.num_fewshot for s in scores},
        "higher_is_better": {
            s.task.name: {m.name: m.higher_is_better for m in s.task.metrics} for s in scores
        },
        "n-samples": {
            s.task.name: {"original": n_total.get(s.task.name, s.n_samples), "effective": s.n_samples}
            for s in scores
        },
        "config": {
            "model": "replaygate-scorer",
            "model_args": f"model={manifest.model},upstream_model={manifest.upstream_model}",
            "model_name": manifest.model,
            "run_id": manifest.run_id,
            "batch_size": 1,
            "limit": manifest.limit,
            "gen_kwargs": manifest.gen_kwargs,
            "random_seed": manifest.seed,
            "scorer_version": SCORER_VERSION,
        },
        "date": time.time(),
    }


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
            if key == "alias" or "_stderr," in key:
                continue
            metric, filter_name = key.split(",", 1)
            stderr = entry.get(f"{metric}_stderr,{filter_name}", "N/A")
            arrow = "↑" if better.get(metric, True) else "↓"
            lines.append(
                f"|{task}|{version}|{filter_name}|{shots}|{metric}|{arrow}|{_fmt(value)}|±|{_fmt(stderr)}|"
            )
    return "\n".join(lines)
