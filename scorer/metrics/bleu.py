"""``bleu``: corpus BLEU of the filtered answers against the targets, with sacrebleu, as lm-eval computes it.

Corpus-level: each document contributes ``[references, answer]`` and the
aggregate is ``sacrebleu.corpus_bleu`` over all of them (several references
per document allowed, as many for every document), on a 0–100 scale. Its
standard error is a bootstrap over documents, as lm-eval's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scorer.metrics.base import Sample, register_metric


def references(sample: Sample) -> list[str]:
    """The target(s) of ``sample`` as reference strings."""
    targets = sample.target if isinstance(sample.target, list) else [sample.target]
    return [str(t) for t in targets]


def corpus_bleu(items: list[Any]) -> float:
    """sacrebleu's corpus BLEU of ``[references, answer]`` items."""
    import sacrebleu  # a heavy import, paid only by tasks that use BLEU

    streams = [list(refs) for refs in zip(*(item[0] for item in items), strict=True)]
    return float(sacrebleu.corpus_bleu([item[1] for item in items], streams).score)


@register_metric("bleu", output_types={"generate_until"}, aggregate=corpus_bleu, stderr="bootstrap")
def bleu(sample: Sample, options: Mapping[str, Any]) -> list[Any]:
    """This document's ``[references, answer]``, for the corpus aggregate."""
    return [references(sample), sample.prediction]
