"""``acc`` and ``acc_norm``: the argmax of summed continuation logprobs is the gold choice.

``acc_norm`` divides each choice's logprob by its length in characters first,
as lm-evaluation-harness does (``acc_bytes`` uses UTF-8 bytes). For a
``loglikelihood`` task, ``acc`` is whether the continuation is the greedy one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from scorer.metrics.base import Sample, register_metric


def _argmax(values: list[float]) -> int:
    # First maximum, as numpy.argmax.
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _gold(sample: Sample) -> list[int]:
    choices = sample.choices or []
    targets = sample.target if isinstance(sample.target, list) else [sample.target]
    gold = []
    for t in targets:
        index = t if isinstance(t, int) else (choices.index(t) if t in choices else -100)
        gold.append(index if 0 <= index < len(choices) else -100)
    return gold


def _choice_accuracy(length: Callable[[str], float]) -> Callable[[Sample, Mapping[str, Any]], float]:
    def score(sample: Sample, options: Mapping[str, Any]) -> float:
        assert sample.loglikelihoods is not None and sample.choices is not None
        lls = [ll / length(c) for ll, c in zip(sample.loglikelihoods, sample.choices, strict=True)]
        return float(_argmax(lls) in _gold(sample))

    return score


_exact = _choice_accuracy(lambda choice: 1.0)


@register_metric("acc", output_types={"multiple_choice", "loglikelihood"})
def acc(sample: Sample, options: Mapping[str, Any]) -> float:
    """Multiple choice: argmax of summed logprobs is gold. Loglikelihood: the continuation is greedy."""
    if sample.choices is None:
        assert sample.greedy is not None
        return float(sample.greedy[0])
    return _exact(sample, options)


register_metric("acc_norm", output_types={"multiple_choice"})(_choice_accuracy(lambda c: float(len(c))))
register_metric("acc_bytes", output_types={"multiple_choice"})(
    _choice_accuracy(lambda c: float(len(c.encode("utf-8"))))
)
