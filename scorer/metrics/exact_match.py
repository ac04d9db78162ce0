"""``exact_match``: the filtered answer equals the target, with lm-eval's normalisation options."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from scorer.metrics.base import Sample, register_metric

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DIGITS = str.maketrans("", "", string.digits)


def normalise(text: str, options: Mapping[str, Any]) -> str:
    """``text`` as lm-eval's ``exact_match_hf_evaluate`` compares it."""
    for pattern in options.get("regexes_to_ignore") or ():
        text = re.sub(pattern, "", text)
    if options.get("ignore_case"):
        text = text.lower()
    if options.get("ignore_punctuation"):
        text = text.translate(_PUNCTUATION)
    if options.get("ignore_numbers"):
        text = text.translate(_DIGITS)
    return text


def _gold_strings(sample: Sample) -> list[str]:
    targets = sample.target if isinstance(sample.target, list) else [sample.target]
    if sample.choices is not None:
        return [sample.choices[t] if isinstance(t, int) else str(t) for t in targets]
    return [str(t) for t in targets]


@register_metric(
    "exact_match",
    output_types={"generate_until", "multiple_choice"},
    options={"ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore"},
)
def exact_match(sample: Sample, options: Mapping[str, Any]) -> float:
    """1.0 if the answer matches any target after normalisation, else 0.0.

    For multiple_choice, as lm-eval: 1 if greedy decoding yields the gold choice.
    """
    if sample.greedy is not None and sample.choices is not None:
        gold = sample.target if isinstance(sample.target, list) else [sample.target]
        return float(
            any(sample.greedy[g] for g in gold if isinstance(g, int) and 0 <= g < len(sample.greedy))
        )
    if not options:  # the usual case, and the hot path of a re-score
        answer = sample.prediction
        return float(any(answer == gold for gold in _gold_strings(sample)))
    answer = normalise(sample.prediction, options)
    return float(any(answer == normalise(gold, options) for gold in _gold_strings(sample)))
