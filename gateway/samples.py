"""Which sample a sampling request gets: the k-th identical sampling request of a run is sample k.

Within a run, each identical request that samples takes the lowest sample
index not already answered or in flight, so k asks reach the upstream k
times and get k draws; a failed ask gives its index back, so the client's
retry asks for the same sample. Another run replaying the same workload takes
the same indices in the same order, and finds each one cached.

The ledger of a run is derived from its records (every answered sample says
which request it sampled and which index it is) the first time this process
sees the run, so a restarted gateway never hands sample 0 out again. It is
per process: gateways sharing a run share the records, not the in-flight set.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

from cache.records import read_records, shard_paths
from cache.runs import run_dir

Taken = dict[str, set[int]]  # a request's key (sample_of) → the indices answered or in flight


class SampleLedger:
    """The sample indices each run has taken, per sampling request."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._runs: dict[str, asyncio.Future[Taken]] = {}

    async def _taken(self, run_id: str) -> Taken:
        loading = self._runs.get(run_id)
        if loading is None:  # the first caller loads; the others wait for the same load
            loading = self._runs[run_id] = asyncio.ensure_future(asyncio.to_thread(self._load, run_id))
        try:
            return await asyncio.shield(loading)
        except OSError:
            del self._runs[run_id]  # unreadable now; the next request tries again
            raise

    def _load(self, run_id: str) -> Taken:
        taken: Taken = defaultdict(set)
        for record in read_records(shard_paths(run_dir(self.cache_dir, run_id))):
            index, of = record.get("sample"), record.get("sample_of")
            if isinstance(index, int) and isinstance(of, str) and record.get("status") == 200:
                taken[of].add(index)
        return taken

    async def take(self, run_id: str, key: str) -> int:
        """The lowest sample index of ``key`` this run has not taken; it is taken from now on."""
        indices = (await self._taken(run_id))[key]
        index = 0
        while index in indices:
            index += 1
        indices.add(index)
        return index

    async def pin(self, run_id: str, key: str, index: int) -> None:
        """Mark ``index`` taken because a request named it (``X-Sample-Index``)."""
        (await self._taken(run_id))[key].add(index)

    def give_back(self, run_id: str, key: str, index: int) -> None:
        """Return an index whose request failed: the next ask for ``key`` takes it again."""
        loading = self._runs.get(run_id)
        if loading is not None and loading.done() and not loading.exception():
            loading.result()[key].discard(index)
