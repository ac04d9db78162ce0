"""Perplexities, as lm-evaluation-harness aggregates them.

* ``perplexity`` (``loglikelihood`` tasks): ``exp(-mean(loglikelihood))`` over
  documents, bootstrap standard error.
* ``word_perplexity`` / ``byte_perplexity`` (``loglikelihood_rolling``): each
  document gives ``[loglikelihood, words]`` or ``[loglikelihood, bytes]`` of its
  target text; the aggregate is ``exp(-Σ loglikelihood / Σ count)``. Words are
  ``re.split(r"\\s+", text)`` pieces, bytes UTF-8 bytes, as lm-eval counts them.
  No standard error (lm-eval gives none for weighted means).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from scorer.metrics.base import Sample, mean, register_metric

_WHITESPACE = re.compile(r"\s+")


def count_words(text: str) -> int:
    """lm-eval's ``count_words``."""
    return len(_WHITESPACE.split(text))


def count_bytes(text: str) -> int:
    """lm-eval's ``count_bytes``."""
    return len(text.encode("utf-8"))


def weighted_mean(items: list[Any]) -> float:
    """``Σ a / Σ b`` over ``[a, b]`` items."""
    return float(sum(a for a, _ in items) / sum(b for _, b in items))


def _loglikelihood(sample: Sample) -> float:
    assert sample.loglikelihoods is not None
    return float(sample.loglikelihoods[0])


def _perplexity(values: list[Any]) -> float:
    return math.exp(-mean(values))


def _weighted_perplexity(items: list[Any]) -> float:
    return math.exp(-weighted_mean(items))


@register_metric(
    "perplexity",
    output_types={"loglikelihood"},
    higher_is_better=False,
    aggregate=_perplexity,
    stderr="bootstrap",
)
def perplexity(sample: Sample, options: Mapping[str, Any]) -> float:
    """The continuation's summed logprob (aggregated to a perplexity)."""
    return _loglikelihood(sample)


@register_metric(
    "word_perplexity",
    output_types={"loglikelihood_rolling"},
    higher_is_better=False,
    aggregate=_weighted_perplexity,
    stderr="none",
)
def word_perplexity(sample: Sample, options: Mapping[str, Any]) -> list[float]:
    """``[loglikelihood, words]`` of the document's text."""
    return [_loglikelihood(sample), count_words(str(sample.target))]


@register_metric(
    "byte_perplexity",
    output_types={"loglikelihood_rolling"},
    higher_is_better=False,
    aggregate=_weighted_perplexity,
    stderr="none",
)
def byte_perplexity(sample: Sample, options: Mapping[str, Any]) -> list[float]:
    """``[loglikelihood, bytes]`` of the document's text."""
    return [_loglikelihood(sample), count_bytes(str(sample.target))]
