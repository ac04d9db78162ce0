"""Turning a round's plans and their responses into per-sample values and task metrics.

Pure: responses come in as a mapping from cache key to parsed body, so this
module neither reads the cache nor knows a model exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scorer.errors import MissingResponses
from scorer.filters import FilterChain
from scorer.metrics import Sample
from scorer.responses import generations, loglikelihood
from scorer.rounds import DocPlan
from scorer.stderr import bootstrap_stderr, mean_stderr
from scorer.tasks import TaskConfig

NO_FILTER = "none"


@dataclass
class TaskScores:
    """A task's aggregated metrics and its per-sample rows."""

    task: TaskConfig
    n_samples: int
    # (metric, filter) → (value, stderr)
    values: dict[tuple[str, str], tuple[float, float | str]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def missing_keys(plans: list[DocPlan], responses: Mapping[str, Any]) -> list[str]:
    """Keys the plans need that ``responses`` lacks, each once, in plan order."""
    seen: dict[str, None] = {}
    for plan in plans:
        for request in plan.requests:
            if request.key not in responses:
                seen[request.key] = None
    return list(seen)


def _samples(
    task: TaskConfig, plan: DocPlan, responses: Mapping[str, Any]
) -> list[tuple[str, Sample, list[str]]]:
    """``(filter name, sample, raw responses)`` for each filter chain that applies."""
    if task.output_type == "generate_until":
        raw = generations(responses[plan.requests[0].key])
        chains: tuple[FilterChain, ...] = task.filters
        return [
            (c.name, Sample(plan.doc, plan.target, c.apply(list(raw)), plan.choices), raw) for c in chains
        ]
    parsed = [loglikelihood(responses[r.key], r.ctxlen) for r in plan.requests]
    lls = [ll for ll, _ in parsed]
    greedy = [g for _, g in parsed]
    if task.output_type == "loglikelihood_rolling":
        lls, greedy = [sum(lls)], [all(greedy)]
    sample = Sample(plan.doc, plan.target, [], plan.choices, lls, greedy)
    return [(NO_FILTER, sample, [])]


def score_task(
    task: TaskConfig, plans: list[DocPlan], responses: Mapping[str, Any], bootstrap_iters: int = 1000
) -> TaskScores:
    """Score every document of ``plans`` with every filter and metric of ``task``.

    Raises:
        MissingResponses: some request has no response; nothing is scored as empty.
    """
    missing = missing_keys(plans, responses)
    if missing:
        raise MissingResponses(task.name, missing)
    scores = TaskScores(task, len(plans))
    per_metric: dict[tuple[str, str], list[Any]] = {}
    for plan in plans:
        for filter_name, sample, raw in _samples(task, plan, responses):
            row_values: dict[str, Any] = {}
            for spec in task.metrics:
                value = spec.metric.per_sample(sample, spec.options)
                row_values[spec.name] = value
                per_metric.setdefault((spec.name, filter_name), []).append(value)
            scores.rows.append(
                {
                    "doc_id": plan.doc_id,
                    "filter": filter_name,
                    "doc": plan.doc,
                    "prompt": plan.prompt,
                    "target": plan.target,
                    "response": raw,
                    "filtered": sample.predictions if task.output_type == "generate_until" else None,
                    "loglikelihoods": sample.loglikelihoods,
                    "metrics": row_values,
                    "keys": [r.key for r in plan.requests],
                }
            )
    for spec in task.metrics:
        for (name, filter_name), values in per_metric.items():
            if name != spec.name or not values:
                continue
            value = spec.metric.aggregate(values)
            if spec.metric.stderr == "mean":
                stderr: float | str = mean_stderr(values)
            elif spec.metric.stderr == "bootstrap":
                stderr = bootstrap_stderr(spec.metric.aggregate, values, bootstrap_iters)
            else:
                stderr = "N/A"
            scores.values[(name, filter_name)] = (value, stderr)
    return scores
