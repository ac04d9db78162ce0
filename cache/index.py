"""The diskcache index from request key to stored response body.

The index is a convenience: the run records are the source of truth and
:func:`rebuild_index` recreates it from them alone. diskcache is process-safe
(SQLite underneath), so several gateways can share one cache dir. Every call
that touches disk runs in a small thread pool, never on the event loop; the
async methods keep a bounded in-memory tier of recently used bodies in front
of it, so a repeated hit costs a dict lookup instead of a thread hop. (A
``no-cache`` refresh made by another process reaches this tier only once the
entry has aged out of it.)
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import diskcache
import orjson

from cache import embeddings
from cache.record import PAID, Record
from cache.records import ReadReport, read_records, shard_paths
from cache.runs import list_runs, run_dir
from cache.validity import invalid_reason

# Keys per SQL query in :meth:`ResponseIndex.get_many` (SQLite's default limit on parameters is 999+).
MANY_BATCH = 500
# What one memory-tier entry costs beyond its body and key objects: its OrderedDict slot and link.
_ENTRY_OVERHEAD = 104


class ResponseIndex:
    """Key → response body bytes, stored under ``<cache_dir>/index``."""

    def __init__(self, cache_dir: Path, size_limit: int = 2**40, memory_bytes: int = 64 * 2**20) -> None:
        # eviction off: losing an entry would mean paying for it again.
        self._cache = diskcache.Cache(str(cache_dir / "index"), size_limit=size_limit, eviction_policy="none")
        self._lane = _Lane(self._get_batch, self._set_batch)
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_bytes = 0
        self._memory_bytes = memory_bytes

    def get(self, key: str) -> bytes | None:
        """The stored body for ``key``, or None (blocking; see :meth:`aget`)."""
        value = self._cache.get(key)
        return value if isinstance(value, bytes) else None

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The stored bodies of those ``keys`` that have one (blocking), ``MANY_BATCH`` keys per query.

        Same answers as :meth:`get` key by key, several times faster: keys are
        looked up sorted, many per ``SELECT … WHERE key IN (…)`` on a read-only
        connection of its own, and values are decoded by diskcache itself (so
        bodies diskcache keeps in files are read too). Read-only: unlike
        :meth:`get` it never touches diskcache's access statistics.
        """
        wanted = sorted(set(keys))
        found: dict[str, bytes] = {}
        if not wanted:
            return found
        disk = self._cache.disk
        connection = sqlite3.connect(f"file:{self._cache.directory}/cache.db?mode=ro", uri=True)
        try:
            now = time.time()
            for start in range(0, len(wanted), MANY_BATCH):
                batch = wanted[start : start + MANY_BATCH]
                query = (
                    "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN "
                    f"({','.join('?' * len(batch))}) AND (expire_time IS NULL OR expire_time > ?)"
                )
                for key, mode, filename, value in connection.execute(query, (*batch, now)):
                    if mode == diskcache.core.MODE_RAW and type(value) is bytes:
                        found[key] = value  # what disk.fetch returns for it, without the call
                        continue
                    body = disk.fetch(mode, filename, value, False)
                    if isinstance(body, bytes):
                        found[key] = body
        finally:
            connection.close()
        return found

    def set(self, key: str, body: bytes) -> None:
        """Store ``body`` under ``key`` (blocking; see :meth:`aset`)."""
        self._cache.set(key, body)

    async def aget(self, key: str) -> bytes | None:
        """:meth:`get`, from the memory tier or off the event loop."""
        body = self._recent.get(key)
        if body is not None:
            self._recent.move_to_end(key)
            return body
        body = await self._lane.get(key)
        if body is not None:
            self._remember(key, body)
        return body

    async def aset(self, key: str, body: bytes) -> None:
        """:meth:`set` off the event loop; the body is then in the memory tier too."""
        await self._lane.set(key, body)
        self._remember(key, body)

    def _get_batch(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def _set_batch(self, items: list[tuple[str, bytes]]) -> None:
        with self._cache.transact():  # one SQLite commit for the whole turn's writes
            for key, body in items:
                self._cache.set(key, body)

    def recent(self, key: str) -> bytes | None:
        """The body from the memory tier only: never touches disk, never waits."""
        return self._recent.get(key)

    def remember(self, key: str, body: bytes) -> None:
        """Put ``body`` in the memory tier only (an entry another store, e.g. Redis, answered)."""
        self._remember(key, body)

    def _remember(self, key: str, body: bytes) -> None:
        if len(body) > self._memory_bytes // 8:
            return  # one huge body must not flush the tier
        # A compact copy: orjson.dumps leaves its bytes in a buffer of 4 KiB or more
        # (sys.getsizeof does not show it), so keeping the caller's object could
        # cost many times the length counted here.
        body = memoryview(body).tobytes()
        old = self._recent.pop(key, None)
        if old is not None:
            self._recent_bytes -= _entry_cost(key, old)
        self._recent[key] = body
        self._recent_bytes += _entry_cost(key, body)
        while self._recent_bytes > self._memory_bytes:
            evicted_key, evicted = self._recent.popitem(last=False)
            self._recent_bytes -= _entry_cost(evicted_key, evicted)

    @property
    def memory_tier_bytes(self) -> int:
        """What the memory tier's entries cost, by ``sys.getsizeof`` of key and body plus slot overhead."""
        return self._recent_bytes

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Drop every entry."""
        self._cache.clear()
        self._recent.clear()
        self._recent_bytes = 0

    def close(self) -> None:
        """Finish pending work and close the database."""
        self._lane.stop()
        self._cache.close()


class _Lane:
    """The index's one thread: everything asked of the disk during one loop turn goes in one trip.

    Under concurrency this turns a thread round trip per lookup and per write
    (and a SQLite commit per write) into one of each per loop turn, writes and
    lookups together: the turn's writes are committed first, in one
    transaction, so its lookups see them. Work is handed over on a
    ``SimpleQueue`` and answered with one ``call_soon_threadsafe`` per trip
    that settles every waiter at once: no executor futures to chain.
    """

    def __init__(
        self,
        get_batch: Callable[[list[str]], list[bytes | None]],
        set_batch: Callable[[list[tuple[str, bytes]]], None],
    ) -> None:
        self._get_batch = get_batch
        self._set_batch = set_batch
        self._gets: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._sets: list[tuple[tuple[str, bytes], asyncio.Future[None]]] = []
        self._trips: queue.SimpleQueue[_Trip | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="index", daemon=True)
        self._thread.start()

    def get(self, key: str) -> asyncio.Future[bytes | None]:
        """The stored body for ``key``, or None, from the next trip."""
        done: asyncio.Future[bytes | None] = self._loop_turn().create_future()
        self._gets.append((key, done))
        return done

    def set(self, key: str, body: bytes) -> asyncio.Future[None]:
        """Done once ``body`` is committed under ``key`` by the next trip."""
        done: asyncio.Future[None] = self._loop_turn().create_future()
        self._sets.append(((key, body), done))
        return done

    def _loop_turn(self) -> asyncio.AbstractEventLoop:
        """The running loop, with a trip scheduled at the end of this turn if none is yet."""
        loop = asyncio.get_running_loop()
        if not self._gets and not self._sets:
            loop.call_soon(self._send, loop)
        return loop

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        trip = _Trip(loop, self._gets, self._sets)
        self._gets, self._sets = [], []
        self._trips.put(trip)

    def _run(self) -> None:
        while (trip := self._trips.get()) is not None:
            if trip.sets:
                try:
                    self._set_batch([item for item, _ in trip.sets])
                except Exception as exc:  # every waiter hears of it; the thread goes on
                    trip.set_error = exc
            if trip.gets:
                try:
                    trip.found = self._get_batch([key for key, _ in trip.gets])
                except Exception as exc:
                    trip.get_error = exc
            try:
                trip.loop.call_soon_threadsafe(trip.deliver)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def stop(self) -> None:
        """Finish the trips already sent, then end the thread."""
        self._trips.put(None)
        self._thread.join()


@dataclass
class _Trip:
    """One trip of the index thread: its lookups and writes, and what came of them."""

    loop: asyncio.AbstractEventLoop
    gets: list[tuple[str, asyncio.Future[bytes | None]]]
    sets: list[tuple[tuple[str, bytes], asyncio.Future[None]]]
    found: list[bytes | None] | None = None
    get_error: BaseException | None = None
    set_error: BaseException | None = None

    def deliver(self) -> None:
        """Settle every waiter (on the loop's thread); a waiter that gave up is skipped."""
        for _, done in self.sets:
            if not done.done():
                if self.set_error is None:
                    done.set_result(None)
                else:
                    done.set_exception(self.set_error)
        for (_, waiter), body in zip(self.gets, self.found or [None] * len(self.gets), strict=True):
            if not waiter.done():
                if self.get_error is None:
                    waiter.set_result(body)
                else:
                    waiter.set_exception(self.get_error)


def _entry_cost(key: str, body: bytes) -> int:
    return sys.getsizeof(key) + sys.getsizeof(body) + _ENTRY_OVERHEAD


def indexable(record: Record) -> bool:
    """Whether a record carries a fresh, successful, cacheable response: a valid answer of its endpoint.

    The same check the gateway makes before storing an answer, so a rebuild
    drops whatever an older gateway cached that was not an answer.
    """
    return (
        record.get("served") in PAID  # copies add nothing to a rebuild
        and record.get("status") == 200
        and record.get("cacheable", True)
        and invalid_reason(str(record.get("endpoint")), record.get("response")) is None
    )


class IndexSink(Protocol):
    """Another store :func:`rebuild_index` fills with the same entries (e.g. a fleet's Redis)."""

    def set(self, key: str, body: bytes) -> None: ...
    def flush(self) -> None: ...


def rebuild_index(cache_dir: Path, report: ReadReport | None = None, also: Sequence[IndexSink] = ()) -> int:
    """Recreate the index from every run's records; returns the entries written (one per key).

    Each entry also goes to every sink in ``also`` (flushed at the end), which
    is overwritten key by key, not cleared.

    The latest answer wins: for each key, the indexable record with the
    greatest ``ts_end`` (when it was recorded), ties going to the later shard
    by name, then the later line. Replaying shards in order alone would let a
    newer process's stale miss undo an older process's ``no-cache`` refresh.

    Two passes keep memory bounded by the number of keys, never their bodies:
    the first finds each key's winner as (time, shard, ordinal), the second
    re-reads the shards and stores only the winners. (Lines appended while it
    runs keep earlier ordinals where they were, so a live writer is harmless.)
    """
    shards = [p for run_id in list_runs(cache_dir) for p in shard_paths(run_dir(cache_dir, run_id))]
    shards.sort(key=lambda p: p.name)
    winners: dict[str, tuple[float, int, int]] = {}
    for shard_number, ordinal, record in _indexable_records(shards, report):
        position = (_recorded_at(record), shard_number, ordinal)
        for key in _entry_keys(record):
            if key not in winners or position > winners[key]:
                winners[key] = position
    chosen = {(shard, ordinal, key) for key, (_, shard, ordinal) in winners.items()}
    index = ResponseIndex(cache_dir)
    try:
        index.clear()
        for shard_number, ordinal, record in _indexable_records(shards, None):
            for key, body in index_entries(record):
                if (shard_number, ordinal, key) in chosen:
                    index.set(key, body)
                    for sink in also:
                        sink.set(key, body)
        for sink in also:
            sink.flush()
        return len(winners)
    finally:
        index.close()


def index_entries(record: Record) -> list[tuple[str, bytes]]:
    """The (key, body) entries a record makes: its answer, or one per embedded input it paid for."""
    if record.get("endpoint") == embeddings.EMBEDDINGS:
        return embeddings.entries(record)
    return [(record["key"], orjson.dumps(record["response"]))]


def _entry_keys(record: Record) -> list[str]:
    if record.get("endpoint") == embeddings.EMBEDDINGS:
        return [key for _, key, _ in record.get("parts") or []]
    return [record["key"]]


def _indexable_records(shards: list[Path], report: ReadReport | None) -> Iterator[tuple[int, int, Record]]:
    """(shard number, ordinal of the record in its shard, record) for each indexable record."""
    for shard_number, shard in enumerate(shards):
        # Hits (the only records that refer to a body) are never indexed: nothing to resolve.
        for ordinal, record in enumerate(read_records([shard], report, resolve_refs=False)):
            if indexable(record):
                yield shard_number, ordinal, record


def _recorded_at(record: Record) -> float:
    """When the record's answer came back (``ts_end``, else ``ts``); 0 for records that say neither."""
    for field in ("ts_end", "ts"):
        value = record.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0
