"""Append-only JSONL run records (Curator-style): one line per request/response pair.

Durability, as promised to callers of :meth:`RecordWriter.append`:

* when ``append`` returns, the line has been handed to the kernel with
  ``write(2)`` on the run's shard: it survives a crash (even ``kill -9``) of
  this process;
* with ``fsync="always"`` it has also been fsynced: it survives power loss;
  with ``"interval"`` the shard is fsynced at most ``fsync_interval`` seconds
  after the write; with ``"never"`` only when the kernel decides.

Each process writes its own shard per run (``<start>-<host>-<pid>.jsonl``), so
two gateways on one cache dir never interleave lines. Writes are group-committed
by one thread: everything queued while the previous batch was on disk goes out
in one ``write`` per shard, and the event loop never blocks on disk.
A crash can tear only the last line of a shard; :func:`read_records` skips it
and reports it.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from cache.runs import run_dir

FsyncPolicy = Literal["always", "interval", "never"]
RECORD_SCHEMA = 1

_STOP = object()


class RecordWriteError(OSError):
    """A record could not be written (disk full, permissions): nothing was acknowledged."""


class RecordWriter:
    """Group-committing writer of run records, safe to call from one event loop."""

    def __init__(
        self,
        cache_dir: Path,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        scrub: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self._scrub = scrub
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._shard_name = f"{int(time.time() * 1000)}-{socket.gethostname()}-{os.getpid()}.jsonl"
        self._files: dict[str, int] = {}
        self._dirty: set[int] = set()
        self._last_sync = time.monotonic()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self._thread.start()

    def shard_path(self, run_id: str) -> Path:
        """The file this process appends ``run_id``'s records to."""
        return run_dir(self.cache_dir, run_id) / self._shard_name

    async def append(self, run_id: str, record: dict[str, Any]) -> None:
        """Write one record; returns once it is as durable as the fsync policy says."""
        line = orjson.dumps(record) + b"\n"
        if self._scrub is not None:  # secrets an upstream echoed never reach the disk
            line = self._scrub(line)
        done = asyncio.get_running_loop().create_future()
        self._queue.put((run_id, line, done))
        await done

    def close(self) -> None:
        """Write what is queued, fsync and close every shard. Idempotent."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # -- the writer thread --------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:  # group commit: take everything that queued up meanwhile
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(b is _STOP for b in batch)
            self._commit([b for b in batch if b is not _STOP])
            if stop:
                self._close_files()
                return

    def _commit(self, batch: list[tuple[str, bytes, asyncio.Future[None]]]) -> None:
        if not batch:
            return
        by_run: dict[str, list[tuple[bytes, asyncio.Future[None]]]] = {}
        for run_id, line, done in batch:
            by_run.setdefault(run_id, []).append((line, done))
        outcomes: list[tuple[asyncio.Future[None], BaseException | None]] = []
        for run_id, items in by_run.items():
            error: BaseException | None = None
            try:
                self._write(run_id, b"".join(line for line, _ in items))
            except OSError as exc:
                error = RecordWriteError(exc.errno, f"cannot write run record: {exc.strerror}")
            outcomes.extend((done, error) for _, done in items)
        loops: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for done, error in outcomes:
            loops.setdefault(done.get_loop(), []).append((done, error))
        for loop, settled in loops.items():
            loop.call_soon_threadsafe(_settle, settled)

    def _write(self, run_id: str, data: bytes) -> None:
        fd = self._files.get(run_id)
        if fd is None:
            path = self.shard_path(run_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._files[run_id] = fd
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        self._dirty.add(fd)
        now = time.monotonic()
        if self.fsync == "always" or (
            self.fsync == "interval" and now - self._last_sync >= self.fsync_interval
        ):
            for dirty in self._dirty:
                os.fsync(dirty)
            self._dirty.clear()
            self._last_sync = now

    def _close_files(self) -> None:
        for fd in self._files.values():
            if self.fsync != "never":
                os.fsync(fd)
            os.close(fd)
        self._files.clear()
        self._dirty.clear()


def _settle(outcomes: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for done, error in outcomes:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


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


def read_records(paths: list[Path], report: ReadReport | None = None) -> Iterator[dict[str, Any]]:
    """Stream the records of ``paths``, skipping (and reporting) lines a crash tore.

    Memory stays bounded by one line: files are read line by line.
    """
    report = report if report is not None else ReadReport()
    for path in paths:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("no newline: the write was cut short")
                    record = orjson.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except ValueError:
                    report.torn.append((path, number))
                    continue
                report.lines += 1
                yield record
