"""``f1``: token-overlap F1 between the answer and the best-matching target, as SQuAD computes it.

Both sides are normalised the SQuAD way (lower-cased, ASCII punctuation and
the articles a/an/the removed, whitespace collapsed) and split on whitespace;
F1 is the harmonic mean of token precision and recall over the multiset of
shared tokens. With several targets the best one counts. (lm-eval's own
``f1`` metric is a corpus-level classification F1 over choice indices; this
one is the reading-comprehension token F1 its QA tasks compute.)
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping
from typing import Any

from scorer.metrics.base import Sample, register_metric

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    """SQuAD's ``normalize_answer``."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, truth: str) -> float:
    """F1 of the normalised tokens of ``prediction`` against ``truth``."""
    predicted = normalise_answer(prediction).split()
    expected = normalise_answer(truth).split()
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision = same / len(predicted)
    recall = same / len(expected)
    return 2 * precision * recall / (precision + recall)


@register_metric("f1", output_types={"generate_until"})
def f1(sample: Sample, options: Mapping[str, Any]) -> float:
    """The best token F1 of the filtered answer over the targets."""
    targets = sample.target if isinstance(sample.target, list) else [sample.target]
    return max(token_f1(sample.prediction, str(t)) for t in targets) if targets else 0.0
