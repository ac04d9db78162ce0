"""What each round of a run cost, from the gateway's records: calls, tokens and dollars by ``X-Task`` label.

The scorer labels generation ``<task>`` and the judge round ``<task>/judge``
(:mod:`scorer.judge.run`), which is what ``gateway report --by task`` groups by;
this reads the same records, so the results and the report agree. Tokens and
cost are what was paid (answers from upstream); cache hits count as requests only.
Read-only, and no model is involved.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from scorer.judge.config import JUDGE_LABEL_SUFFIX

_PAID = {"miss", "batched"}  # served by an upstream call (anything else came from the cache)


def _empty() -> dict[str, Any]:
    return {"requests": 0, "upstream_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}


def round_usage(cache_dir: Path, run_id: str, tasks: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task: ``generation`` (label ``<task>``) and ``judge`` (``<task>/judge``) totals of the records."""
    wanted = {t: t for t in tasks}
    wanted.update({t + JUDGE_LABEL_SUFFIX: t for t in tasks})
    usage: dict[str, dict[str, dict[str, Any]]] = {
        t: {"generation": _empty(), "judge": _empty()} for t in tasks
    }
    folder = run_dir(cache_dir, run_id)
    if not folder.is_dir():
        return usage
    for record in read_records(shard_paths(folder), resolve_refs=False):
        label = record.get("task")
        if label not in wanted:
            continue
        side = "judge" if label.endswith(JUDGE_LABEL_SUFFIX) and label != wanted[label] else "generation"
        totals = usage[wanted[label]][side]
        totals["requests"] += 1
        if record.get("served") in _PAID:
            totals["upstream_calls"] += 1
            counted = record.get("usage") or {}
            totals["prompt_tokens"] += int(counted.get("prompt_tokens") or 0)
            totals["completion_tokens"] += int(counted.get("completion_tokens") or 0)
        totals["cost_usd"] = round(totals["cost_usd"] + float(record.get("cost_usd") or 0.0), 9)
    return usage
