"""The one interface every metric shares, and the registry that names them.

A metric is a per-sample function plus how its per-sample values are
aggregated over a task (mean by default) and how the aggregate's standard
error is estimated (closed form for means, bootstrap for corpus-level
metrics, as lm-evaluation-harness does). Adding a metric means adding one
module to this package with one :func:`register_metric` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

OUTPUT_TYPES = frozenset({"generate_until", "multiple_choice", "loglikelihood", "loglikelihood_rolling"})


@dataclass
class Sample:
    """What a metric sees of one document, after filtering.

    Attributes:
        doc: the document.
        target: the gold answer (a string, a choice index, or a list of either).
        predictions: the filtered answers (one per sample drawn; empty for loglikelihood tasks).
        choices: the answer choices (multiple_choice), else None.
        loglikelihoods: summed continuation logprob per request (choice, or rolling window total).
        greedy: per request, whether greedy decoding would produce the continuation.
    """

    doc: dict[str, Any]
    target: Any
    predictions: list[str] = field(default_factory=list)
    choices: list[str] | None = None
    loglikelihoods: list[float] | None = None
    greedy: list[bool] | None = None

    @property
    def prediction(self) -> str:
        """The first filtered answer ('' when there is none)."""
        return self.predictions[0] if self.predictions else ""


PerSample = Callable[[Sample, Mapping[str, Any]], Any]
Aggregation = Callable[[list[Any]], float]
StderrKind = Literal["mean", "bootstrap", "none"]


def mean(values: list[Any]) -> float:
    """Arithmetic mean."""
    return float(sum(values) / len(values))


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        name: the name tasks use in ``metric_list``.
        output_types: the task output types it can score.
        higher_is_better: the default direction.
        options: the keyword options it accepts from the task.
        per_sample: the per-document value.
        aggregate: the task-level value from all per-document values.
        stderr: how the standard error of ``aggregate`` is estimated.
        report_as: the reported name for given options (``pass@k`` reports ``pass@1``).
    """

    name: str
    output_types: frozenset[str]
    higher_is_better: bool
    options: frozenset[str]
    per_sample: PerSample
    aggregate: Aggregation = mean
    stderr: StderrKind = "mean"
    report_as: Callable[[Mapping[str, Any]], str] | None = None

    def reported_name(self, options: Mapping[str, Any]) -> str:
        """The name results use for this metric with ``options``."""
        return self.report_as(options) if self.report_as else self.name


_METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    *,
    output_types: Iterable[str],
    higher_is_better: bool = True,
    options: Iterable[str] = (),
    aggregate: Aggregation = mean,
    stderr: StderrKind = "mean",
    report_as: Callable[[Mapping[str, Any]], str] | None = None,
) -> Callable[[PerSample], PerSample]:
    """Register the decorated per-sample function as metric ``name``."""

    def add(fn: PerSample) -> PerSample:
        _METRICS[name] = Metric(
            name,
            frozenset(output_types),
            higher_is_better,
            frozenset(options),
            fn,
            aggregate,
            stderr,
            report_as,
        )
        return fn

    return add


def registry() -> dict[str, Metric]:
    """Every registered metric by name."""
    return _METRICS
