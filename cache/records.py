"""Append-only JSONL run records (Curator-style): one line per request/response pair.

Durability, as promised to callers of :meth:`RecordWriter.append`:

* when ``append`` returns, the line has been handed to the kernel with
  ``write(2)`` on the run's shard: it survives a crash (even ``kill -9``) of
  this process;
* with ``fsync="always"`` it has also been fsynced: it survives power loss;
  with ``"interval"`` the shard is fsynced within ``fsync_interval`` seconds of
  the write; with ``"never"`` only when the kernel decides;
* when a write fails (disk full), ``append`` raises :class:`RecordWriteError`
  and the shard is cut back to where it was, so no fragment is left to glue
  onto the next line.

A hit does not copy a body its run already holds. When ``append`` is given
the body (``body=``) of a ``hit`` or ``coalesced`` record and this writer has
already written a record with the same key and the same body bytes to this
run's shard, the line carries ``"response": null`` and ``"response_ref": "<key>"``
instead: its response is that of the nearest earlier line *of the same shard*
with that key and a non-null ``response`` (so a run folder still stands on its
own). Sameness is judged by length and Python's per-process salted 64-bit hash
of the bytes (cached on the bytes object, so a body served from memory is
hashed once). :func:`read_records` gives such lines their response back
unless told not to (``resolve_refs=False``, for readers that never need it).

Each process writes its own shard per run (``<start>-<host>-<pid>.jsonl``), so
two gateways on one cache dir never interleave lines. Writes are group-committed:
every line appended during one turn of the event loop goes out in one
``write`` per shard at the end of that turn (a write to the page cache, which
costs microseconds), and fsync, which can take milliseconds, runs in a thread
so the loop never waits on the disk. A crash can tear only the last line of a
shard; :func:`read_records` skips it and reports it.

A writer keeps at most ``max_open`` shards open (by default a quarter of the
process's open-file limit, at most 256), closing the least recently written
when it needs another, and closes more of them when the process runs out of
descriptors, so thousands of run-ids cannot starve sockets. Closing a shard
never weakens the promises above: the fsync thread syncs it before closing it,
and only then can its descriptor number be reused.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from cache.record import COPIES, RECORD_SCHEMA, Record, from_json, to_json

__all__ = ["RECORD_SCHEMA", "ReadReport", "RecordWriteError", "RecordWriter", "read_records", "shard_paths"]
from cache.runs import run_dir

FsyncPolicy = Literal["always", "interval", "never"]
MAX_OPEN_SHARDS = 256
# Bodies a writer remembers (as hashes) to refer to: bounded, and forgetting only costs a copy.
MAX_REMEMBERED_BODIES = 100_000
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def default_max_open() -> int:
    """Open shards a writer may keep: a quarter of the soft open-file limit, from 4 to ``MAX_OPEN_SHARDS``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_SHARDS
    return max(4, min(MAX_OPEN_SHARDS, soft // 4))


class RecordWriteError(OSError):
    """A record could not be written (disk full, permissions): nothing was acknowledged."""


Pending = tuple[str, bytes, "asyncio.Future[None]"]


class RecordWriter:
    """Group-committing writer of run records, for use from one event loop."""

    def __init__(
        self,
        cache_dir: Path,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        scrub: Callable[[bytes], bytes] | None = None,
        max_open: int | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self._scrub = scrub
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.max_open = max(1, max_open if max_open is not None else default_max_open())
        self._shard_name = f"{int(time.time() * 1000)}-{socket.gethostname()}-{os.getpid()}.jsonl"
        self._files: OrderedDict[str, int] = OrderedDict()  # least recently written first
        self._bodies: dict[
            str, dict[str, tuple[int, int]]
        ] = {}  # run -> key -> body (length, hash) in its shard
        self._remembered = 0
        self._pending: list[Pending] = []
        self._syncer = _Syncer(fsync_interval) if fsync != "never" else None

    def shard_path(self, run_id: str) -> Path:
        """The file this process appends ``run_id``'s records to."""
        return run_dir(self.cache_dir, run_id) / self._shard_name

    async def append(self, run_id: str, record: Record, body: bytes | None = None) -> None:
        """Write one record; returns once it is as durable as the fsync policy says.

        ``body``: the bytes of the record's ``response``, when it has one; with
        it, a hit of a body already in this run's shard refers to it by key.
        """
        if body is not None:
            record = self._refer_or_remember(run_id, record, body)
        line = to_json(record)
        if self._scrub is not None:  # secrets an upstream echoed never reach the disk
            line = self._scrub(line)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self._pending:  # first line of this turn: commit them all at its end
            loop.call_soon(self._commit)
        self._pending.append((run_id, line, done))
        await done

    def _refer_or_remember(self, run_id: str, record: Record, body: bytes) -> Record:
        key = record.get("key")
        if not isinstance(key, str) or record.get("response") is None:
            return record
        seen = self._bodies.setdefault(run_id, {})
        fingerprint = (len(body), hash(body))
        if record.get("served") in COPIES and seen.get(key) == fingerprint:  # a copy of a paid-for body
            return {**record, "response": None, "response_ref": key}
        if key not in seen:
            if self._remembered >= MAX_REMEMBERED_BODIES:
                self._bodies.clear()  # start over: later hits copy their bodies until seen again
                seen = self._bodies[run_id] = {}
                self._remembered = 0
            self._remembered += 1
        seen[key] = fingerprint
        return record

    def _forget_bodies(self, run_id: str) -> None:
        """After a failed write or a closed shard: refer to nothing the shard may not hold."""
        self._remembered -= len(self._bodies.pop(run_id, {}))

    def _commit(self) -> None:
        batch, self._pending = self._pending, []
        by_run: dict[str, list[Pending]] = {}
        for item in batch:
            by_run.setdefault(item[0], []).append(item)
        loop = batch[0][2].get_loop()
        written = False
        for run_id, items in by_run.items():
            try:
                fd = self._write(run_id, b"".join(line for _, line, _ in items))
            except OSError as exc:
                self._forget_bodies(run_id)
                error = RecordWriteError(exc.errno, f"cannot write run record: {exc.strerror}")
                for _, _, done in items:
                    if not done.done():
                        done.set_exception(error)
                continue
            written = True
            if self._syncer is not None:  # dirty now, before a later shard of this turn can retire it
                self._syncer.mark([fd], [], loop)
            if self.fsync != "always":
                _settle([done for _, _, done in items])
        if self._syncer is not None and written and self.fsync == "always":
            self._syncer.mark([], [d for _, _, d in batch if not d.done()], loop)

    def _write(self, run_id: str, data: bytes) -> int:
        fd = self._files.get(run_id)
        if fd is None:
            fd = self._open(run_id)
        self._files.move_to_end(run_id)
        size = os.fstat(fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            os.ftruncate(fd, size)  # one writer per shard: cutting back is safe
            raise
        return fd

    def _open(self, run_id: str) -> int:
        """Open ``run_id``'s shard, closing the least recently written ones to stay within bounds."""
        path = self.shard_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        while len(self._files) >= self.max_open:
            retired, fd = self._files.popitem(last=False)
            self._forget_bodies(retired)
            if self._syncer is not None:
                self._syncer.retire(fd)  # synced, then closed, by the thread that may still sync it
            else:
                os.close(fd)
        try:
            return self._open_file(run_id, path)
        except OSError as exc:
            if exc.errno not in _OUT_OF_DESCRIPTORS or not self._files:
                raise
        # Sockets (or others) took the descriptors: give back half of ours at once, then try again.
        freed = []
        for _ in range((len(self._files) + 1) // 2):
            retired, fd = self._files.popitem(last=False)
            self._forget_bodies(retired)
            freed.append(fd)
        if self._syncer is not None:
            self._syncer.close_now(freed)
        else:
            for fd in freed:
                os.close(fd)
        return self._open_file(run_id, path)

    def _open_file(self, run_id: str, path: Path) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._files[run_id] = fd
        return fd

    @property
    def open_shards(self) -> int:
        """Shards this writer holds open now (those being synced before closing not counted)."""
        return len(self._files)

    def close(self) -> None:
        """Write what is pending, fsync and close every shard. Idempotent."""
        if self._pending:
            self._commit()
        if self._syncer is not None:
            self._syncer.stop()
        for fd in self._files.values():
            if self.fsync != "never":
                os.fsync(fd)
            os.close(fd)
        self._files.clear()


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None = None) -> None:
    for done in futures:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class _Syncer:
    """A thread that fsyncs written shards: at once for waiting acks, else within an interval.

    It also closes the shards the writer retires (:meth:`retire`), after
    syncing them: a descriptor it may still sync is never closed under it, so
    its number cannot be reused by another file before that sync.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()  # guards the sets and lists below
        self._io = threading.Lock()  # held while descriptors taken from them are synced or closed
        self._dirty: set[int] = set()
        self._retired: set[int] = set()
        self._acks: list[tuple[asyncio.AbstractEventLoop, list[asyncio.Future[None]]]] = []
        self._carried: RecordWriteError | None = None  # a failed sync in close_now, for the next acks
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="record-fsync", daemon=True)
        self._thread.start()

    def mark(self, fds: list[int], acks: list[asyncio.Future[None]], loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._dirty.update(fds)
            if acks:
                self._acks.append((loop, acks))
                self._wake.set()

    def retire(self, fd: int) -> None:
        """The writer is done with ``fd``: sync it (if it was written) and close it, soon."""
        with self._lock:
            self._retired.add(fd)
        self._wake.set()  # close promptly: the writer wants the descriptor back

    def close_now(self, fds: list[int]) -> None:
        """Sync (if written) and close ``fds`` before returning: the process is out of descriptors.

        Blocks the caller for at most the thread's current round plus these syncs.
        """
        with self._io, self._lock:
            dirty = self._dirty.intersection(fds)
            self._dirty.difference_update(fds)
            for fd in fds:
                try:
                    if fd in dirty:
                        os.fsync(fd)
                except OSError as exc:  # told to whoever waits for the next sync
                    self._carried = RecordWriteError(exc.errno, f"cannot sync run record: {exc.strerror}")
                finally:
                    os.close(fd)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._io:
                with self._lock:
                    dirty, self._dirty = self._dirty, set()
                    retired, self._retired = self._retired, set()
                    acks, self._acks = self._acks, []
                    error, self._carried = self._carried, None
                    stopping = self._stopping
                for fd in dirty:
                    try:
                        os.fsync(fd)
                    except OSError as exc:  # the disk failed: whoever waits for this sync hears so
                        error = RecordWriteError(exc.errno, f"cannot sync run record: {exc.strerror}")
                for fd in retired:  # synced above if written since the last round
                    os.close(fd)
            for loop, futures in acks:
                loop.call_soon_threadsafe(_settle, futures, error)
            if stopping:
                return

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join()


@dataclass
class ReadReport:
    """What :func:`read_records` skipped, so callers can say so."""

    lines: int = 0
    torn: list[tuple[Path, int]] = field(default_factory=list)

    def describe(self) -> str:
        """One line for a terminal or a log."""
        if not self.torn:
            return f"{self.lines} records, none torn"
        where = ", ".join(f"{p.name}:{n}" for p, n in self.torn[:5])
        return f"{self.lines} records; skipped {len(self.torn)} torn line(s) at {where}"


def shard_paths(directory: Path) -> list[Path]:
    """A run folder's shards, oldest first (names start with the writer's start time)."""
    return sorted(directory.glob("*.jsonl"))


def read_records(
    paths: list[Path], report: ReadReport | None = None, resolve_refs: bool = True
) -> Iterator[Record]:
    """Stream the records of ``paths``, skipping (and reporting) lines a crash tore.

    Memory stays bounded by one line: files are read line by line. With
    ``resolve_refs`` (the default), a record with a ``response_ref`` gets the
    response it refers to, read again from its line in the same shard (memory
    grows by a byte offset per key there); readers that never look at hits'
    responses pass False and skip that work.
    """
    report = report if report is not None else ReadReport()
    for path in paths:
        with path.open("rb") as handle:
            bodies: dict[str, int] = {}  # key -> offset of the last line with its response
            offset = 0
            for number, line in enumerate(handle, start=1):
                start, offset = offset, offset + len(line)
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("no newline: the write was cut short")
                    record = from_json(line)  # older schemas gain their defaults
                except ValueError:
                    report.torn.append((path, number))
                    continue
                report.lines += 1
                if resolve_refs:
                    _resolve(path, record, bodies, start)
                yield record


def _resolve(path: Path, record: Record, bodies: dict[str, int], offset: int) -> None:
    key = record.get("key")
    if record.get("response") is not None and isinstance(key, str):
        bodies[key] = offset
        return
    ref = record.get("response_ref")
    if isinstance(ref, str) and ref in bodies:
        with path.open("rb") as again:
            again.seek(bodies[ref])
            record["response"] = orjson.loads(again.readline())["response"]
