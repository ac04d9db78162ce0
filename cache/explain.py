"""Why did this miss? The cached requests nearest to one, and the canonical fields that differ.

A request misses when no earlier request had its key; the key is built from
the endpoint, the deployment and the canonical fields
(:func:`cache.keys.canonical_fields`). So the useful answer is the stored
requests of the same endpoint and model whose canonical fields are closest,
and which fields differ (a changed ``stop``, another few-shot example in the
prompt, a whitespace change). Every run's records are streamed once; memory
is the few nearest kept so far.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.keys import canonical_fields
from cache.record import PAID, Record
from cache.records import read_records, shard_paths
from cache.runs import list_runs, run_dir


class NoSuchRequest(LookupError):
    """The run has no record with that key."""


@dataclass(frozen=True)
class FieldDiff:
    """One canonical field that differs, and how."""

    field: str
    how: str  # "changed", "whitespace only", "only in this request", "only in the cached one"
    this: Any = None
    cached: Any = None
    detail: str = ""


@dataclass
class Neighbour:
    """A stored request near the one explained."""

    run_id: str
    key: str
    ts: float | None
    differences: list[FieldDiff] = field(default_factory=list)


@dataclass
class Explanation:
    """The request explained, and its nearest stored neighbours, nearest first."""

    run_id: str
    key: str
    endpoint: str | None
    model: str | None
    served: str | None
    fields: dict[str, Any]
    neighbours: list[Neighbour]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            "run_id": self.run_id,
            "key": self.key,
            "endpoint": self.endpoint,
            "model": self.model,
            "served": self.served,
            "canonical_fields": self.fields,
            "neighbours": [
                {
                    "run_id": n.run_id,
                    "key": n.key,
                    "ts": n.ts,
                    "differences": [d.__dict__ for d in n.differences],
                }
                for n in self.neighbours
            ],
        }


def compared_fields(record: Record) -> dict[str, Any]:
    """The canonical fields of a record's request, plus its sample index when it is a sample."""
    request = record.get("request")
    fields = canonical_fields(request) if isinstance(request, dict) else {}
    if record.get("sample") is not None:
        fields["(sample)"] = record["sample"]
    return fields


def differences(this: dict[str, Any], cached: dict[str, Any]) -> list[FieldDiff]:
    """The canonical fields in which ``this`` and ``cached`` differ, by name."""
    out = []
    for name in sorted(this.keys() | cached.keys()):
        if name not in cached:
            out.append(FieldDiff(name, "only in this request", this=this[name]))
        elif name not in this:
            out.append(FieldDiff(name, "only in the cached one", cached=cached[name]))
        elif this[name] != cached[name]:
            out.append(_changed(name, this[name], cached[name]))
    return out


def _changed(name: str, a: Any, b: Any) -> FieldDiff:
    if isinstance(a, str) and isinstance(b, str) and a.split() == b.split():
        return FieldDiff(name, "whitespace only", a, b, _first_difference(a, b))
    if isinstance(a, list) and isinstance(b, list):
        where = [i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]]
        detail = f"{len(a)} vs {len(b)} items; differ at " + ", ".join(f"[{i}]" for i in where[:10])
        return FieldDiff(name, "changed", a, b, detail)
    if isinstance(a, str) and isinstance(b, str):
        return FieldDiff(name, "changed", a, b, _first_difference(a, b))
    return FieldDiff(name, "changed", a, b)


def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"from character {i}: {a[i : i + 30]!r} vs {b[i : i + 30]!r}"


def explain(cache_dir: Path, run_id: str, key: str, nearest: int = 3) -> Explanation:
    """The record of ``key`` in ``run_id`` and the ``nearest`` stored requests like it, from every run."""
    target = None
    for record in read_records(shard_paths(run_dir(cache_dir, run_id)), resolve_refs=False):
        if record.get("key") == key:
            target = record
            break
    if target is None:
        raise NoSuchRequest(f"no request with key {key!r} in run {run_id!r}")
    this = compared_fields(target)
    same = (target.get("endpoint"), target.get("model"), target.get("upstream_model"))
    heap: list[tuple[int, int, Neighbour]] = []  # (-distance, order, neighbour): the farthest on top
    seen: set[str] = {key}
    order = 0
    for other_run in list_runs(cache_dir):
        for record in read_records(shard_paths(run_dir(cache_dir, other_run)), resolve_refs=False):
            other_key = record.get("key")
            if (
                not isinstance(other_key, str)
                or other_key in seen
                or record.get("served") not in PAID  # only fresh answers went into the cache
                or record.get("status") != 200
                or (record.get("endpoint"), record.get("model"), record.get("upstream_model")) != same
            ):
                continue
            seen.add(other_key)
            diffs = differences(this, compared_fields(record))
            order += 1
            entry = (-len(diffs), -order, Neighbour(other_run, other_key, record.get("ts"), diffs))
            if len(heap) < nearest:
                heapq.heappush(heap, entry)
            elif entry[:2] > heap[0][:2]:
                heapq.heapreplace(heap, entry)
    neighbours = [n for _, _, n in sorted(heap, key=lambda e: (-e[0], -e[1]))]
    return Explanation(
        run_id, key, target.get("endpoint"), target.get("model"), target.get("served"), this, neighbours
    )


def to_text(explanation: Explanation) -> str:
    """The explanation for a terminal."""
    e = explanation
    lines = [f"request {e.key} of run {e.run_id}: {e.endpoint} on {e.model}, served {e.served}"]
    if not e.neighbours:
        lines.append("no stored request of the same endpoint and model to compare with")
    for n in e.neighbours:
        lines.append("")
        lines.append(f"nearest: {n.key} (run {n.run_id}), {len(n.differences)} field(s) differ")
        for d in n.differences:
            lines.append(f"  {d.field}: {d.how}" + (f" — {d.detail}" if d.detail else ""))
            if d.how in ("changed", "only in this request", "only in the cached one") and not d.detail:
                lines.append(f"    this:   {d.this!r}"[:200])
                lines.append(f"    cached: {d.cached!r}"[:200])
    return "\n".join(lines)
