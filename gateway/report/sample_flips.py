"""Per-sample metric differences between two scorer runs: which samples flipped.

``scorer score`` writes one JSON line per document and filter to
``<run>/scorer/samples_<task>.jsonl`` (``samples_<task>-<tag>.jsonl`` with
overrides), each with its ``doc_id``, ``filter`` and per-sample ``metrics``.
For every such file both runs have, a sample (doc id and filter) present in
both is compared metric by metric: a value that changed counts as ``up``
(B's is the larger number: 0 → 1 for accuracy), ``down`` (1 → 0), or
``other`` when the values are not numbers (a corpus metric's per-sample
pair), and its doc id is listed under that direction.

Memory: run A's per-sample metric values of one file at a time (no prompts,
documents or responses are kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cache.runs import run_dir

SAMPLES_GLOB = "samples_*.jsonl"


@dataclass
class MetricFlips:
    """How one metric of one task and filter moved between run A and run B."""

    task: str
    filter: str
    metric: str
    compared: int = 0
    mean_a: float | None = None
    mean_b: float | None = None
    up: list[Any] = field(default_factory=list)
    down: list[Any] = field(default_factory=list)
    other: list[Any] = field(default_factory=list)

    @property
    def changed(self) -> int:
        """Samples whose value differs."""
        return len(self.up) + len(self.down) + len(self.other)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON (doc ids in file order)."""
        return {
            "task": self.task,
            "filter": self.filter,
            "metric": self.metric,
            "compared": self.compared,
            "changed": self.changed,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "up": len(self.up),
            "down": len(self.down),
            "other": len(self.other),
            "up_doc_ids": self.up,
            "down_doc_ids": self.down,
            "other_doc_ids": self.other,
        }


@dataclass
class TaskFlips:
    """One samples file both runs have: samples in both or in one, and each metric's flips."""

    task: str
    in_both: int = 0
    only_a: int = 0
    only_b: int = 0
    metrics: list[MetricFlips] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            "task": self.task,
            "in_both": self.in_both,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "metrics": [m.as_dict() for m in self.metrics],
        }


def sample_files(cache_dir: Path, run_id: str) -> dict[str, Path]:
    """A run's per-sample files by task name (with its override tag, if any); empty for a gateway-only run."""
    folder = run_dir(cache_dir, run_id) / "scorer"
    return {p.name[len("samples_") : -len(".jsonl")]: p for p in sorted(folder.glob(SAMPLES_GLOB))}


def _rows(path: Path) -> Iterator[tuple[tuple[Any, str], dict[str, Any]]]:
    with path.open("rb") as handle:
        for line in handle:
            row = orjson.loads(line)
            yield (row.get("doc_id"), str(row.get("filter"))), row.get("metrics") or {}


def _number(value: Any) -> float | None:
    """``value`` as a number when it is one (bools included: exact_match may be True/False)."""
    return float(value) if isinstance(value, int | float) else None


class _Mean:
    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: Any) -> None:
        number = _number(value)
        if number is not None:
            self.total += number
            self.count += 1

    def value(self) -> float | None:
        return self.total / self.count if self.count else None


def task_flips(task: str, path_a: Path, path_b: Path) -> TaskFlips:
    """Compare one task's samples file of run A with run B's (each read once)."""
    result = TaskFlips(task)
    values_a = dict(_rows(path_a))
    flips: dict[tuple[str, str], MetricFlips] = {}
    means: dict[tuple[str, str], tuple[_Mean, _Mean]] = {}
    seen: set[tuple[Any, str]] = set()
    for sample, metrics_b in _rows(path_b):
        metrics_a = values_a.get(sample)
        if metrics_a is None:
            result.only_b += 1
            continue
        if sample in seen:
            continue  # a repeated row (should not happen): its first reading counts
        seen.add(sample)
        result.in_both += 1
        doc_id, filter_name = sample
        for metric in metrics_a.keys() & metrics_b.keys():
            slot = (filter_name, metric)
            if slot not in flips:
                flips[slot] = MetricFlips(task, filter_name, metric)
                means[slot] = (_Mean(), _Mean())
            flip, (mean_a, mean_b) = flips[slot], means[slot]
            a, b = metrics_a[metric], metrics_b[metric]
            flip.compared += 1
            mean_a.add(a)
            mean_b.add(b)
            if a == b:
                continue
            number_a, number_b = _number(a), _number(b)
            if number_a is None or number_b is None:
                flip.other.append(doc_id)
            elif number_b > number_a:
                flip.up.append(doc_id)
            else:
                flip.down.append(doc_id)
    result.only_a = len(values_a.keys() - seen)
    for slot in sorted(flips):
        flip = flips[slot]
        flip.mean_a, flip.mean_b = means[slot][0].value(), means[slot][1].value()
        result.metrics.append(flip)
    return result


def diff_samples(cache_dir: Path, run_a: str, run_b: str) -> list[TaskFlips]:
    """Per-sample differences for every samples file both runs have (none for gateway-only runs)."""
    files_a, files_b = sample_files(cache_dir, run_a), sample_files(cache_dir, run_b)
    return [
        task_flips(task, files_a[task], files_b[task]) for task in sorted(files_a.keys() & files_b.keys())
    ]


def flips_rows(tasks: list[TaskFlips]) -> list[list[Any]]:
    """One row per task, filter and metric: means, samples compared, changed, up, down, other."""
    return [
        [
            m.task,
            m.filter,
            m.metric,
            m.mean_a,
            m.mean_b,
            m.compared,
            m.changed,
            len(m.up),
            len(m.down),
            len(m.other),
        ]
        for t in tasks
        for m in t.metrics
    ]


FLIPS_HEADER = ["task", "filter", "metric", "A mean", "B mean", "compared", "changed", "up", "down", "other"]


def ids_text(ids: list[Any], limit: int = 20) -> str:
    """Doc ids for a line of text, cut after ``limit``."""
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", … ({len(ids) - limit:,} more)" if len(ids) > limit else "")


def to_text(tasks: list[TaskFlips], run_a: str, run_b: str) -> str:
    """The per-sample differences for a terminal: a table, then the doc ids that moved."""
    from gateway.report.render import table

    if not tasks:
        return ""
    lines = [f"per-sample metrics ({run_a} → {run_b}; up: {run_b}'s value is larger)"]
    for t in tasks:
        lines.append(
            f"  {t.task}: {t.in_both:,} samples in both,"
            f" {t.only_a:,} only in {run_a}, {t.only_b:,} only in {run_b}"
        )
    lines += ["", table(FLIPS_HEADER, flips_rows(tasks))]
    for t in tasks:
        for m in t.metrics:
            for name, ids in (("up", m.up), ("down", m.down), ("other", m.other)):
                if ids:
                    lines.append(f"{m.task} {m.filter} {m.metric} {name}: doc ids {ids_text(ids)}")
    return "\n".join(lines)
