"""Reading a verdict out of the judge's text: a rating, a preferred side, or pass/fail — or nothing.

A verdict that cannot be read is :data:`UNPARSED`, never a zero or a loss:
aggregation counts it apart (:mod:`scorer.judge.aggregate`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scorer.judge.config import JudgeConfig

UNPARSED = None  # the verdict value of a judge answer that says nothing we can read
A, B, TIE = "A", "B", "tie"


@dataclass(frozen=True)
class Verdict:
    """One judge answer, read: ``value`` is a rating (single), A/B/tie (pairwise), True/False (rubric)."""

    text: str
    value: float | str | bool | None

    @property
    def parsed(self) -> bool:
        """Whether the judge's text held a verdict."""
        return self.value is not UNPARSED


def _found(pattern: str, text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(pattern, text, flags=re.IGNORECASE)}


def parse_verdict(judge: JudgeConfig, text: str) -> Verdict:
    """``text`` read as ``judge.kind`` asks; two different verdicts in one answer read as none.

    single: MT-Bench's ``[[rating]]`` (else ``[rating]``, as MT-Bench's backup
    pattern), inside ``judge.scale``; pairwise: ``[[A]]``, ``[[B]]``, ``[[C]]``
    for a tie; rubric: ``[[PASS]]`` / ``[[FAIL]]``.
    """
    found = _found(judge.pattern, text)
    if judge.kind == "single":
        if not found and judge.pattern == r"\[\[(\d+(?:\.\d+)?)\]\]":
            found = _found(r"\[(\d+(?:\.\d+)?)\]", text)
        ratings = set()
        for item in found:
            try:
                ratings.add(float(item))
            except ValueError:
                continue
        low, high = judge.scale
        if len(ratings) != 1 or not low <= next(iter(ratings)) <= high:
            return Verdict(text, UNPARSED)
        return Verdict(text, ratings.pop())
    upper = {f.upper() for f in found}
    if len(upper) != 1:
        return Verdict(text, UNPARSED)
    (only,) = upper
    if judge.kind == "pairwise":
        return Verdict(text, {"A": A, "B": B, "C": TIE, "TIE": TIE}.get(only, UNPARSED))
    return Verdict(text, {"PASS": True, "FAIL": False}.get(only, UNPARSED))
