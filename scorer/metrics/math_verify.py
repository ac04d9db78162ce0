"""``math_verify``: the answer is mathematically the gold one (``math-verify``), not the same string.

As Evalchemy and lighteval score MATH, AIME and AMC: both sides are parsed by
HuggingFace's ``math-verify`` (LaTeX, ``\\boxed{}``, plain expressions; the
answer's last one counts) and compared symbolically, so ``\\frac{1}{2}``,
``0.5`` and ``1/2`` agree. The gold answer is read as LaTeX (wrapped in
``$…$`` when it carries no delimiters of its own) or as a plain expression.
Parsing runs under math-verify's own time limit; an answer it cannot parse is 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from scorer.metrics.base import Sample, register_metric


def _as_latex(gold: str) -> str:
    """Gold text as math-verify finds LaTeX: inside ``$…$`` unless it is delimited or boxed already."""
    text = gold.strip()
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


@lru_cache(maxsize=4096)
def parsed_gold(gold: str) -> Any:
    """The gold answer parsed once per distinct text (a task repeats few of them)."""
    from math_verify import parse

    return parse(_as_latex(gold))


def equivalent(gold: str, answer: str) -> bool:
    """Whether ``answer`` states ``gold`` (math-verify's ``verify``; gold first, as it expects)."""
    from math_verify import parse, verify

    target = parsed_gold(gold)
    predicted = parse(answer)
    if not target or not predicted:
        return False
    return bool(verify(target, predicted))


@register_metric("math_verify", output_types={"generate_until"})
def math_verify(sample: Sample, options: Mapping[str, Any]) -> float:
    """1.0 if the answer is equivalent to any target (math-verify), else 0.0."""
    targets = sample.target if isinstance(sample.target, list) else [sample.target]
    return float(any(equivalent(str(gold), sample.prediction) for gold in targets))
