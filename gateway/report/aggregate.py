"""One pass over a run's records into per-group figures, in memory bounded by the groups, not the records.

Counts, tokens and costs are exact sums. Latencies are reported apart for
answers from the cache (hit, coalesced) and from upstream (miss, batched):
one percentile over both describes neither. Percentiles are exact on groups
small enough to keep every value and come from a bounded sketch past that
(:mod:`gateway.report.quantiles`). Tokenizer calls are counted apart from
completions and kept out of their served counts, hit ratio and latencies. The
charts' time series are per minute, and the latency distribution is a fixed
log-bucket histogram.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cache.record import COPIES, SERVED
from cache.records import ReadReport, read_records, shard_paths
from cache.runs import run_dir
from gateway.endpoints import TOKENIZER_ENDPOINTS
from gateway.report.quantiles import Latencies
from gateway.tally import Counts

GroupBy = Literal["model", "task", "hour"]
NO_TASK = "-"
# Latency histogram edges for the charts: 10 per decade from 10 µs to ~17 minutes.
LATENCY_EDGES_MS = tuple(10 ** (k / 10) for k in range(-20, 61))


class UnknownRun(LookupError):
    """A run-id with no records folder."""


@dataclass(slots=True)
class Group(Counts):
    """Everything reported for one model, task or hour (or the whole run): its counts, times and latencies."""

    name: str
    first_ts: float = math.inf
    last_ts: float = -math.inf
    cached_latency: Latencies = field(default_factory=Latencies)
    upstream_latency: Latencies = field(default_factory=Latencies)

    def add(self, record: Mapping[str, Any]) -> None:
        """Fold one record in: its counts (as ``/metrics`` counts them), then its times and latency."""
        Counts.add(self, record)
        ts = record.get("ts")
        if isinstance(ts, int | float):
            self.first_ts = min(self.first_ts, ts)
            self.last_ts = max(self.last_ts, record.get("ts_end") or ts)
        latency = record.get("latency_ms")
        if (
            isinstance(latency, int | float)
            and latency >= 0
            and record.get("endpoint") not in TOKENIZER_ENDPOINTS
            and record.get("served") != "batch"  # a batch's latency is hours: it describes no online request
        ):
            (self.cached_latency if record.get("served") in COPIES else self.upstream_latency).add(latency)

    @property
    def span_s(self) -> float:
        """Seconds from the first request's start to the last answer."""
        return max(0.0, self.last_ts - self.first_ts) if self.requests else 0.0

    @property
    def throughput_rps(self) -> float | None:
        """Requests per second over the span; None for fewer than two requests (one has no rate)."""
        span = self.span_s
        return round(self.requests / span, 6) if self.requests >= 2 and span > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """The group as plain JSON-able values."""
        return {
            "name": self.name,
            "requests": self.requests,
            "completions": self.completions,
            "tokenizer_calls": self.tokenizer_calls,
            "served": {k: self.served.get(k, 0) for k in SERVED} | self._other_served(),
            "hit_ratio": round(self.hit_ratio, 6),
            "status": dict(sorted(self.status.items())),
            "errors": dict(sorted(self.errors.items())),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "usage_counted": self.usage_counted,
            "cost_usd": round(self.cost_usd, 9),
            "cost_online_usd": round(self.cost_usd - self.batch_cost_usd, 9),
            "cost_batch_usd": round(self.batch_cost_usd, 9),
            "cost_saved_usd": round(self.cost_saved_usd, 9),
            "free": self.free,
            "unpriced": self.unpriced,
            "attempts": self.attempts,
            "latency_ms": {
                "cached": self.cached_latency.summary(),
                "upstream": self.upstream_latency.summary(),
            },
            "first_ts": self.first_ts if self.requests else None,
            "last_ts": self.last_ts if self.requests else None,
            "span_s": round(self.span_s, 3),
            "throughput_rps": self.throughput_rps,
        }

    def _other_served(self) -> dict[str, int]:
        return {k: v for k, v in self.served.items() if k not in SERVED}


@dataclass
class Timeline:
    """Per-minute requests, tokens, hits and misses, for the charts."""

    minutes: dict[int, list[int]] = field(default_factory=dict)  # minute -> [requests, in, out, cached, paid]

    def add(self, record: Mapping[str, Any]) -> None:
        ts = record.get("ts")
        if not isinstance(ts, int | float):
            return
        row = self.minutes.setdefault(int(ts // 60), [0, 0, 0, 0, 0])
        row[0] += 1
        usage = record.get("usage")
        if isinstance(usage, dict):
            row[1] += usage.get("prompt_tokens") or 0
            row[2] += usage.get("completion_tokens") or 0
        if record.get("served") in COPIES:
            row[3] += 1
        else:
            row[4] += 1


@dataclass
class LatencyHistogram:
    """Counts of latencies in fixed log buckets, cached answers apart from upstream ones."""

    cached: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    upstream: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))

    def add(self, record: Mapping[str, Any]) -> None:
        latency = record.get("latency_ms")
        if (
            not isinstance(latency, int | float)
            or latency <= 0
            or record.get("endpoint") in TOKENIZER_ENDPOINTS
        ):
            return
        k = min(len(LATENCY_EDGES_MS), max(0, math.ceil(10 * math.log10(latency)) + 20))
        (self.cached if record.get("served") in COPIES else self.upstream)[k] += 1


@dataclass
class RunReport:
    """A run's figures: per group, in total, over time, and how they were read."""

    run_id: str
    by: GroupBy
    groups: dict[str, Group] = field(default_factory=dict)
    total: Group = field(default_factory=lambda: Group("total"))
    timeline: Timeline = field(default_factory=Timeline)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    read: ReadReport = field(default_factory=ReadReport)
    generated: float = field(default_factory=time.time)

    def add(self, record: Mapping[str, Any]) -> None:
        """Fold one record into its group, the total, the timeline and the histogram."""
        name = group_name(record, self.by)
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name)
        group.add(record)
        self.total.add(record)
        self.timeline.add(record)
        self.latency.add(record)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON: groups sorted by name, then the total."""
        return {
            "run_id": self.run_id,
            "by": self.by,
            "records": self.read.lines,
            "torn_lines": len(self.read.torn),
            "groups": [self.groups[name].as_dict() for name in sorted(self.groups)],
            "total": self.total.as_dict(),
        }


def group_name(record: Mapping[str, Any], by: GroupBy) -> str:
    """The group a record falls in: its model, its task ("-" when it names none) or its UTC hour."""
    if by == "model":
        return str(record.get("model") or "?")
    if by == "task":
        task = record.get("task")
        if not task:
            metadata = (record.get("request") or {}).get("metadata")
            task = metadata.get("task") if isinstance(metadata, dict) else None
        return str(task) if task else NO_TASK
    ts = record.get("ts")
    if not isinstance(ts, int | float):
        return "?"
    return time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(ts))


def run_paths(cache_dir: Path, run_id: str) -> list[Path]:
    """A run's shards; :class:`UnknownRun` when it has no folder."""
    folder = run_dir(cache_dir, run_id)
    if not folder.is_dir():
        raise UnknownRun(f"no run {run_id!r} under {folder.parent}")
    return shard_paths(folder)


def build_report(cache_dir: Path, run_id: str, by: GroupBy = "model") -> RunReport:
    """Read ``run_id``'s records once, streaming, into a :class:`RunReport`."""
    report = RunReport(run_id, by)
    fold(report, read_records(run_paths(cache_dir, run_id), report.read, resolve_refs=False))  # no bodies
    return report


def fold(report: RunReport, records: Iterable[Mapping[str, Any]]) -> RunReport:
    """Add ``records`` to ``report``."""
    add = report.add
    for record in records:
        add(record)
    return report
