"""Turning a round's plans and their responses into per-sample values and task metrics.

Pure: responses come in as a mapping from cache key to parsed body, so this
module neither reads the cache nor knows a model exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from scorer.errors import BadInput
from scorer.filters import FilterChain
from scorer.helpers import load_function
from scorer.metrics import Sample
from scorer.metrics.base import PerSample
from scorer.responses import generations, loglikelihood
from scorer.rounds import DocPlan
from scorer.stderr import DEFAULT_BOOTSTRAP_ITERS, bootstrap_iters_for, bootstrap_stderr, mean_stderr
from scorer.tasks import TaskConfig

NO_FILTER = "none"
_ROW_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass
class TaskScores:
    """A task's aggregated metrics and its per-sample rows (as JSON lines)."""

    task: TaskConfig
    n_samples: int
    # (metric, filter) → (value, stderr)
    values: dict[tuple[str, str], tuple[float, float | str]] = field(default_factory=dict)
    lines: list[bytes] = field(default_factory=list)  # the per-sample JSONL, one row per document and filter


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


class TaskScorer:
    """Scores a task document by document, so a round never has to be in memory at once.

    Per-sample rows are serialised as they are scored (one JSON line each);
    only the per-sample metric values are kept, for aggregation.
    """

    def __init__(self, task: TaskConfig) -> None:
        self.task = task
        self.n_samples = 0
        self.lines: list[bytes] = []
        self._values: dict[tuple[str, str], list[Any]] = {}
        self._by_filter: dict[str, list[tuple[str, PerSample, Mapping[str, Any], list[Any]]]] = {}

    def add(self, plan: DocPlan, responses: Mapping[str, Any]) -> None:
        """Score one document; ``responses`` must hold every request of ``plan``."""
        self.n_samples += 1
        generated = self.task.output_type == "generate_until"
        keys = [r.key for r in plan.requests]
        for filter_name, sample, raw in _samples(self.task, plan, responses):
            row_values: dict[str, Any] = {}
            helped = self._process_results(plan, sample) if self.task.raw.get("process_results") else None
            for name, per_sample, options, values in self._slots(filter_name):
                value = row_values[name] = per_sample(sample, options) if helped is None else helped[name]
                values.append(value)
            row = {
                "doc_id": plan.doc_id,
                "filter": filter_name,
                "doc": plan.doc,
                "prompt": plan.prompt,
                "target": plan.target,
                "response": raw,
                "filtered": sample.predictions if generated else None,
                "loglikelihoods": sample.loglikelihoods,
                "metrics": row_values,
                "keys": keys,
            }
            # `+ b"\n"` (not OPT_APPEND_NEWLINE) on purpose: the concatenation copies the row into a
            # small object, so orjson's large output buffer is freed and reused; keeping orjson's own
            # bytes costs a fresh page (a page fault, ~3 us) per row kept.
            self.lines.append(orjson.dumps(row, option=_ROW_OPTIONS) + b"\n")

    def _process_results(self, plan: DocPlan, sample: Sample) -> dict[str, Any]:
        """The task's ``process_results(doc, results)`` helper's values, as lm-eval calls it.

        ``results`` is per request ``(loglikelihood, is_greedy)`` for loglikelihood tasks, the
        filtered answers for generation (one string after ``take_first``, as lm-eval passes it).
        """
        where = f"task {self.task.name}: process_results"
        if self.task.output_type == "generate_until":
            results: list[Any] = list(sample.predictions)
        else:
            results = list(zip(sample.loglikelihoods or [], sample.greedy or [], strict=True))
        values = load_function(self.task.raw["process_results"], where)(plan.doc, results)
        if not isinstance(values, dict):
            raise BadInput(f"{where} returned {type(values).__name__}, not a mapping of metric values")
        absent = [m.name for m in self.task.metrics if m.name not in values]
        if absent:
            raise BadInput(f"{where} returned no value for metric(s) {', '.join(absent)} of metric_list")
        return values

    def _slots(self, filter_name: str) -> list[tuple[str, PerSample, Mapping[str, Any], list[Any]]]:
        """Each metric's name, function, options and value list under ``filter_name``, looked up once."""
        slots = self._by_filter.get(filter_name)
        if slots is None:
            slots = self._by_filter[filter_name] = [
                (
                    spec.name,
                    spec.metric.per_sample,
                    spec.options,
                    self._values.setdefault((spec.name, filter_name), []),
                )
                for spec in self.task.metrics
            ]
        return slots

    @property
    def values(self) -> dict[tuple[str, str], list[Any]]:
        """The per-sample values so far, by (metric, filter), in scoring order."""
        return self._values

    def absorb(self, n_samples: int, lines: list[bytes], values: dict[tuple[str, str], list[Any]]) -> None:
        """Take over what another scorer of the same task scored (documents after this one's)."""
        self.n_samples += n_samples
        self.lines.extend(lines)
        for key, more in values.items():
            self._values.setdefault(key, []).extend(more)

    def finish(self, bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS) -> TaskScores:
        """The aggregated metrics (with standard errors) and the rows."""
        scores = TaskScores(self.task, self.n_samples, lines=self.lines)
        for spec in self.task.metrics:
            for (name, filter_name), values in self._values.items():
                if name != spec.name or not values:
                    continue
                value = spec.metric.aggregate(values)
                if spec.metric.stderr == "mean":
                    stderr: float | str = mean_stderr(values)
                elif spec.metric.stderr == "bootstrap":
                    iters = bootstrap_iters_for(spec.metric.name, bootstrap_iters)
                    stderr = bootstrap_stderr(spec.metric.aggregate, values, iters)
                else:
                    stderr = "N/A"
                scores.values[(name, filter_name)] = (value, stderr)
        return scores
