"""Two runs compared: requests in both, only in one, answers that differ, and totals side by side.

Requests are matched by cache key (``match="key"``: the same request to the
same deployment, sample k with sample k), or by the request alone
(``match="request"``: endpoint, canonical fields and sample index, whatever
the model, so a rerun on another model pairs up). A run that asked the same
request several times counts once, with its latest answer.

Memory: a 16-byte digest per distinct request of run A, plus the examples
kept for display; answers are compared by digest, and the texts of the
differing ones shown are read in a second pass over A.

For the scorer's runs the per-sample metric values are compared too
(:mod:`gateway.report.sample_flips`: which samples flipped).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from cache.keys import canonical_fields
from cache.record import PAID, Record
from cache.records import read_records
from gateway.report.aggregate import Group, run_paths
from gateway.report.record_text import answer_text, error_code, prompt_text
from gateway.report.sample_flips import TaskFlips, diff_samples
from gateway.report.sample_flips import to_text as flips_text

Match = Literal["key", "request"]
MAX_EXAMPLES = 20


def identity(record: Record, match: Match) -> str:
    """What pairs a record with its counterpart in the other run."""
    if match == "key":
        return str(record.get("key"))
    request = record.get("request")
    fields = canonical_fields(request) if isinstance(request, dict) else request
    return hashlib.blake2b(
        orjson.dumps([record.get("endpoint"), fields, record.get("sample")], option=orjson.OPT_SORT_KEYS),
        digest_size=16,
    ).hexdigest()


def outcome(record: Record) -> str:
    """What a record answered, as text: the generated text, or the error code."""
    code = error_code(record)
    return f"error: {code}" if code else answer_text(record.get("response"))


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass
class Changed:
    """One request both runs asked, answered differently."""

    identity: str
    prompt: str
    answer_a: str
    answer_b: str
    model_a: str | None = None
    model_b: str | None = None


@dataclass
class RunDiff:
    """What :func:`diff_runs` found."""

    run_a: str
    run_b: str
    match: Match
    both: int = 0
    same_answer: int = 0
    different_answer: int = 0
    only_a: int = 0
    only_b: int = 0
    totals_a: Group = field(default_factory=lambda: Group("a"))
    totals_b: Group = field(default_factory=lambda: Group("b"))
    changed: list[Changed] = field(default_factory=list)
    only_a_examples: list[str] = field(default_factory=list)
    only_b_examples: list[str] = field(default_factory=list)
    samples: list[TaskFlips] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "match": self.match,
            "both": self.both,
            "same_answer": self.same_answer,
            "different_answer": self.different_answer,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "totals": {"a": self.totals_a.as_dict(), "b": self.totals_b.as_dict()},
            "changed": [c.__dict__ for c in self.changed],
            "only_a_examples": self.only_a_examples,
            "only_b_examples": self.only_b_examples,
            "samples": [t.as_dict() for t in self.samples],
        }


def _records(cache_dir: Path, run_id: str) -> Iterator[Record]:
    return read_records(run_paths(cache_dir, run_id))


def diff_runs(
    cache_dir: Path, run_a: str, run_b: str, match: Match = "key", examples: int = MAX_EXAMPLES
) -> RunDiff:
    """Compare ``run_a`` with ``run_b`` (each read once, A twice when answers differ)."""
    result = RunDiff(run_a, run_b, match)
    answers_a: dict[str, bytes] = {}
    for record in _records(cache_dir, run_a):
        result.totals_a.add(record)
        answers_a[identity(record, match)] = _digest(outcome(record))  # the latest answer wins
    latest_b: dict[str, bytes] = {}
    changed_b: dict[str, dict[str, Any]] = {}
    for record in _records(cache_dir, run_b):
        result.totals_b.add(record)
        ident = identity(record, match)
        latest_b[ident] = digest = _digest(outcome(record))
        if ident in changed_b or (
            ident in answers_a and answers_a[ident] != digest and len(changed_b) < examples
        ):
            changed_b[ident] = _brief(record)  # kept up to date: B's latest answer is the one compared
    for ident, digest in latest_b.items():
        theirs = answers_a.get(ident)
        if theirs is None:
            result.only_b += 1
            if len(result.only_b_examples) < examples:
                result.only_b_examples.append(ident)
        elif theirs == digest:
            result.same_answer += 1
        else:
            result.different_answer += 1
    result.both = result.same_answer + result.different_answer
    for ident in answers_a:
        if ident not in latest_b:
            result.only_a += 1
            if len(result.only_a_examples) < examples:
                result.only_a_examples.append(ident)
    shown = {i: b for i, b in changed_b.items() if answers_a.get(i) != latest_b.get(i)}
    if shown:
        found: dict[str, dict[str, Any]] = {}
        for record in _records(cache_dir, run_a):
            ident = identity(record, match)
            if ident in shown:
                found[ident] = _brief(record)
        for ident, b in shown.items():
            a = found[ident]
            result.changed.append(
                Changed(ident, b["prompt"], a["answer"], b["answer"], a["model"], b["model"])
            )
    result.samples = diff_samples(cache_dir, run_a, run_b)
    return result


def _brief(record: Record) -> dict[str, Any]:
    return {
        "prompt": prompt_text(record.get("request")),
        "answer": outcome(record),
        "model": record.get("model"),
    }


TOTALS = (
    ("requests", lambda g: g.requests),
    ("tokenizer calls", lambda g: g.tokenizer_calls),
    ("hits", lambda g: g.cached),
    ("misses", lambda g: sum(g.served.get(s, 0) for s in PAID)),
    ("tokens in", lambda g: g.tokens_in),
    ("tokens out", lambda g: g.tokens_out),
    ("cost (USD)", lambda g: None if g.free else g.cost_usd),
    ("saved (USD)", lambda g: None if g.free else g.cost_saved_usd),
    ("errors", lambda g: g.failed),
    ("upstream p50 ms", lambda g: g.upstream_latency.quantile(0.5)),
    ("upstream p95 ms", lambda g: g.upstream_latency.quantile(0.95)),
    ("cached p50 ms", lambda g: g.cached_latency.quantile(0.5)),
)


def totals_rows(result: RunDiff) -> list[tuple[str, Any, Any]]:
    """(figure, run A's, run B's) for each total shown side by side."""
    return [(name, get(result.totals_a), get(result.totals_b)) for name, get in TOTALS]


def to_text(result: RunDiff) -> str:
    """The comparison for a terminal."""
    from gateway.report.render import table

    lines = [
        f"{result.run_a} vs {result.run_b} (matched by {result.match})",
        f"in both: {result.both:,} ({result.same_answer:,} same answer,"
        f" {result.different_answer:,} different)"
        f" · only in {result.run_a}: {result.only_a:,} · only in {result.run_b}: {result.only_b:,}",
        "",
        table(["total", result.run_a, result.run_b], [list(row) for row in totals_rows(result)]),
    ]
    for change in result.changed:
        lines += [
            "",
            f"≠ {change.identity[:16]}  prompt: {_one_line(change.prompt)}",
            f"  {result.run_a} ({change.model_a}): {_one_line(change.answer_a)}",
            f"  {result.run_b} ({change.model_b}): {_one_line(change.answer_b)}",
        ]
    if result.samples:
        lines += ["", flips_text(result.samples, result.run_a, result.run_b)]
    return "\n".join(lines)


def _one_line(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
