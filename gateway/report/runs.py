"""Every run under a cache dir, summarised for ``gateway runs``: size, records, cost and time span."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache.records import ReadReport, read_records, shard_paths
from cache.runs import list_runs, run_dir
from gateway.tally import Counts


@dataclass
class RunSummary:
    """One run at a glance."""

    run_id: str
    shards: int
    bytes: int
    records: int
    torn: int
    cost_usd: float
    cost_saved_usd: float
    first_ts: float | None
    last_ts: float | None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return dict(self.__dict__)


def summarise(cache_dir: Path, run_id: str) -> RunSummary:
    """Read one run's records once (streaming) into its summary."""
    paths = shard_paths(run_dir(cache_dir, run_id))
    read = ReadReport()
    counts = Counts()  # the fold the report and /metrics use, so the costs agree
    first: float | None = None
    last: float | None = None
    for record in read_records(paths, read, resolve_refs=False):  # costs and times only
        counts.add(record)
        ts = record.get("ts")
        if isinstance(ts, int | float):
            first = ts if first is None else min(first, ts)
            end = record.get("ts_end") or ts
            last = end if last is None else max(last, end)
    return RunSummary(
        run_id=run_id,
        shards=len(paths),
        bytes=sum(p.stat().st_size for p in paths),
        records=read.lines,
        torn=len(read.torn),
        cost_usd=round(counts.cost_usd, 9),
        cost_saved_usd=round(counts.cost_saved_usd, 9),
        first_ts=first,
        last_ts=last,
    )


def summarise_all(cache_dir: Path) -> list[RunSummary]:
    """Every run's summary, by run-id."""
    return [summarise(cache_dir, run_id) for run_id in list_runs(cache_dir)]
