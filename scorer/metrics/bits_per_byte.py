"""``bits_per_byte`` (``loglikelihood_rolling``): ``-Σ loglikelihood / Σ bytes / ln 2``, as lm-eval has it.

Each document gives ``[loglikelihood, UTF-8 bytes]`` of its target text; no
standard error (lm-eval gives none for weighted means).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from scorer.metrics.base import Sample, register_metric
from scorer.metrics.perplexity import count_bytes, weighted_mean


def _bits_per_byte(items: list[Any]) -> float:
    return -weighted_mean(items) / math.log(2)


@register_metric(
    "bits_per_byte",
    output_types={"loglikelihood_rolling"},
    higher_is_better=False,
    aggregate=_bits_per_byte,
    stderr="none",
)
def bits_per_byte(sample: Sample, options: Mapping[str, Any]) -> list[float]:
    """``[loglikelihood, bytes]`` of the document's text."""
    assert sample.loglikelihoods is not None
    return [float(sample.loglikelihoods[0]), count_bytes(str(sample.target))]
