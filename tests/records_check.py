"""Reading a run folder the way a crash-safety test must: every line parses but a torn last one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from cache.records import ReadReport, read_records, shard_paths


def shard_line_counts(directory: Path) -> dict[Path, int]:
    """How many lines (a torn last one included) each shard of a run folder has."""
    counts = {}
    for path in shard_paths(directory):
        data = path.read_bytes()
        counts[path] = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    return counts


def read_run(directory: Path) -> tuple[list[dict[str, Any]], ReadReport]:
    """Every record of a run folder; fails if any line but a shard's last is broken."""
    report = ReadReport()
    records = list(read_records(shard_paths(directory), report))
    counts = shard_line_counts(directory)
    for path, number in report.torn:
        assert number == counts[path], (
            f"{path.name}: line {number} of {counts[path]} does not parse, and it is not the torn tail: "
            f"{_line(path, number)!r}"
        )
        assert not path.read_bytes().endswith(b"\n"), (
            f"{path.name}: line {number} does not parse yet ends with a newline, so it is not a torn tail "
            f"but a broken record: {_line(path, number)!r}"
        )
    return records, report


def answered_keys(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Key → the successful responses the records hold for it."""
    answers: dict[str, list[Any]] = {}
    for record in records:
        if record.get("status") == 200:
            answers.setdefault(record["key"], []).append(record["response"])
    return answers


def assert_acknowledged_are_recorded(acknowledged: dict[str, bytes], records: list[dict[str, Any]]) -> None:
    """Every (key → body) a client received is in the records, with that body."""
    answers = answered_keys(records)
    missing = [key for key in acknowledged if key not in answers]
    assert not missing, (
        f"{len(missing)} acknowledged responses are not in the run's JSONL, e.g. {missing[:3]}"
    )
    wrong = [key for key, body in acknowledged.items() if orjson.loads(body) not in answers[key]]
    assert not wrong, f"{len(wrong)} acknowledged bodies differ from every recorded one, e.g. {wrong[:3]}"


def _line(path: Path, number: int) -> bytes:
    lines = path.read_bytes().split(b"\n")
    return lines[number - 1][:200]
