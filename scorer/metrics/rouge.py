"""``rouge``: ROUGE F-measure (0–100) of the filtered answer against the best target, with rouge-score.

``rouge_type`` picks ``rouge1``, ``rouge2``, ``rougeL`` or ``rougeLsum``
(default), which is also the name results report. Scored as lm-eval's
TruthfulQA scores ROUGE: the default ``RougeScorer`` (no stemming), " . "
turned into sentence breaks for ``rougeLsum``, the F-measure times 100;
averaged over documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from scorer.metrics.base import Sample, register_metric

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@lru_cache(maxsize=len(ROUGE_TYPES))
def _scorer(rouge_type: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([rouge_type])


def rouge(reference: str, prediction: str, rouge_type: str = "rougeLsum") -> float:
    """The ROUGE F-measure of ``prediction`` against ``reference``, times 100."""
    if rouge_type not in ROUGE_TYPES:
        raise ValueError(f"rouge_type must be one of {', '.join(ROUGE_TYPES)}, got {rouge_type!r}")
    score = _scorer(rouge_type).score(reference.replace(" . ", ".\n"), prediction.replace(" . ", ".\n"))
    return float(score[rouge_type].fmeasure * 100)


@register_metric(
    "rouge",
    output_types={"generate_until"},
    options={"rouge_type"},
    report_as=lambda options: str(options.get("rouge_type", "rougeLsum")),
)
def rouge_metric(sample: Sample, options: Mapping[str, Any]) -> float:
    """The best ROUGE of the filtered answer over the targets."""
    targets = sample.target if isinstance(sample.target, list) else [sample.target]
    kind = str(options.get("rouge_type", "rougeLsum"))
    return max(rouge(str(t), sample.prediction, kind) for t in targets) if targets else 0.0
