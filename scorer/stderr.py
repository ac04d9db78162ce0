"""Standard errors of aggregated metrics, computed as lm-evaluation-harness computes them.

Means get the closed form (sample standard deviation over √n). Corpus-level
metrics (BLEU, perplexity, …) get a bootstrap: ``iters`` resamples drawn in
chunks of at most 1000, chunk ``i`` from ``random.Random(i)``, so the same
values always give the same error.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

# lm-eval's default resamples, and its cap for metrics slow to recompute (evaluator_utils.py).
DEFAULT_BOOTSTRAP_ITERS = 100000
SLOW_METRICS = frozenset({"bleu", "chrf", "chrf++", "ter"})
SLOW_METRIC_ITERS = 100


def bootstrap_iters_for(metric: str, iters: int) -> int:
    """The resamples lm-eval draws for ``metric`` when asked for ``iters``: at most 100 for bleu/chrf/ter."""
    return min(iters, SLOW_METRIC_ITERS) if metric in SLOW_METRICS else iters


def sample_stddev(values: list[float]) -> float:
    """Standard deviation with Bessel's correction."""
    mu = sum(values) / len(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (len(values) - 1))


def mean_stderr(values: list[float]) -> float | str:
    """Standard error of the mean, or ``"N/A"`` below two values."""
    if len(values) < 2:
        return "N/A"
    return sample_stddev(values) / math.sqrt(len(values))


def bootstrap_stderr(statistic: Callable[[list[Any]], float], values: list[Any], iters: int) -> float | str:
    """Bootstrap standard error of ``statistic(values)``, or ``"N/A"`` if it cannot be estimated."""
    if iters <= 0 or len(values) < 2:
        return "N/A"
    chunk = min(1000, iters)
    replicates = []
    for i in range(iters // chunk):
        rnd = random.Random(i)
        for _ in range(chunk):
            replicates.append(statistic(rnd.choices(values, k=len(values))))
    return sample_stddev(replicates)
