"""A run's requests newest first, filtered, in pages: ``gateway log`` and the ``/ui`` request log.

Newest first means by the time each answer was written (``ts_end``): each
shard is read backwards (:mod:`cache.reverse`), in the order it was written,
filtered, and the shards merged on ``ts_end``, so the first page costs the lines it shows
(plus those filtered out before them), never the whole run. Memory is a
block per shard. A page hands back a :class:`Cursor` (where each shard's
reading stopped) for the next one, and every entry a locator
(``<shard index>:<offset>``) that reads its record again in one seek.

A hit that refers to its answer (``response_ref``) is resolved only when
needed (a text search, a request view) by looking backwards in its shard
for the line that holds the answer, remembering recent finds.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import regex

from cache.reverse import blocks_backwards, complete_end, lines_backwards
from gateway.report.aggregate import run_paths
from gateway.report.record_text import answer_text, error_code, prompt_text

MAX_REMEMBERED_REFS = 10_000
SEARCH_BLOCK = 4 * 1024 * 1024  # a text search reads big blocks: fewer Python steps per byte
REF_MARKER = b'"response_ref":"'


@dataclass(frozen=True)
class LogFilter:
    """Which records to show; every given criterion must hold (values within one are alternatives).

    ``status`` values: an HTTP status (``503``), a class (``5xx``), ``ok``,
    ``error``, or an error code (``upstream_error``). ``grep`` is a
    case-insensitive substring of the prompt or the answer.
    """

    served: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    task: tuple[str, ...] = ()
    grep: str | None = None

    def __post_init__(self) -> None:
        # A needle with no character JSON escapes can be looked for in the raw line first (cheap).
        needle = (self.grep or "").lower()
        raw = (
            bool(needle) and needle.isascii() and needle.isprintable() and not any(c in needle for c in '"\\')
        )
        object.__setattr__(self, "_raw_needle", needle.encode() if raw else None)

    @property
    def raw_needle(self) -> bytes | None:
        """The search text as bytes to find in a raw line, when that is a sound pre-check."""
        return self._raw_needle  # type: ignore[attr-defined,no-any-return]

    def matches_fields(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` passes every criterion but the text search."""
        if self.served and record.get("served") not in self.served:
            return False
        if self.model and record.get("model") not in self.model:
            return False
        if self.task and (record.get("task") or "-") not in self.task:
            return False
        return not self.status or any(status_matches(record, s) for s in self.status)


def status_matches(record: dict[str, Any], wanted: str) -> bool:
    """Whether ``record``'s status or error code is ``wanted`` (see :class:`LogFilter`)."""
    status = int(record.get("status") or 0)
    code = error_code(record)
    wanted = wanted.strip().lower()
    if wanted == "ok":
        return code is None and status == 200
    if wanted == "error":
        return code is not None or status >= 400
    if wanted.isdigit():
        return status == int(wanted)
    if len(wanted) == 3 and wanted.endswith("xx") and wanted[0].isdigit():
        return status // 100 == int(wanted[0])
    return code is not None and code.lower() == wanted


@dataclass(frozen=True)
class Entry:
    """One record of the log, and where it lives."""

    shard: int
    offset: int
    record: dict[str, Any]
    raw: bytes

    @property
    def locator(self) -> str:
        """``<shard index>:<offset>``: enough to read this record again."""
        return f"{self.shard}:{self.offset}"


@dataclass
class Cursor:
    """Where a page stopped: per shard (by index), the offset before which lines are still to read."""

    ends: dict[int, int] = field(default_factory=dict)

    def encode(self) -> str:
        """The cursor as a short URL-safe token."""
        return ".".join(f"{i}-{end}" for i, end in sorted(self.ends.items()))

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """The cursor of a token from :meth:`encode`; ``ValueError`` if it is not one."""
        ends = {}
        for part in filter(None, token.split(".")):
            index, end = part.split("-")
            ends[int(index)] = int(end)
        return cls(ends)


class RunLog:
    """One run's records, newest first."""

    def __init__(self, cache_dir: Path, run_id: str) -> None:
        self.run_id = run_id
        self.paths = run_paths(cache_dir, run_id)
        self._refs: OrderedDict[tuple[int, str], tuple[int, Any]] = OrderedDict()

    def entries(self, where: LogFilter | None = None, cursor: Cursor | None = None) -> Iterator[Entry]:
        """Every matching record from ``cursor`` (the newest, without one) back to the oldest."""
        where = where or LogFilter()
        streams = []
        for index, path in enumerate(self.paths):
            if cursor is not None and index in cursor.ends:
                end = cursor.ends[index]
            elif cursor is not None:
                continue  # a shard begun after the first page was read: its records are newer
            else:
                end = complete_end(path)
            streams.append(self._shard_entries(index, path, end, where))
        return heapq.merge(*streams, key=_newest_first)

    def page(
        self, where: LogFilter | None = None, cursor: Cursor | None = None, limit: int = 50
    ) -> tuple[list[Entry], Cursor | None]:
        """Up to ``limit`` matching records, and the cursor of the next page (None after the last)."""
        if cursor is None:
            ends = {i: complete_end(p) for i, p in enumerate(self.paths)}
        else:
            ends = {i: cursor.ends[i] for i in range(len(self.paths)) if i in cursor.ends}
        out: list[Entry] = []
        stream = self.entries(where, Cursor(dict(ends)))
        for entry in stream:
            if len(out) == limit:
                return out, Cursor(ends)  # one more exists: there is a next page
            out.append(entry)
            ends[entry.shard] = entry.offset
        return out, None

    def _shard_entries(self, index: int, path: Path, end: int, where: LogFilter) -> Iterator[Entry]:
        needle = where.raw_needle
        lines = lines_backwards(path, end) if needle is None else candidate_lines(path, end, needle)
        for offset, line in lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # torn by a crash: read_records reports these; the log skips them
            if not isinstance(record, dict) or not where.matches_fields(record):
                continue
            if where.grep is not None:
                text = (
                    prompt_text(record.get("request"))
                    + "\n"
                    + answer_text(self.response(index, offset, record))
                )
                if where.grep.lower() not in text.lower():
                    continue
            yield Entry(index, offset, record, line)

    def read(self, locator: str) -> Entry:
        """The entry at ``locator`` (from :attr:`Entry.locator`); ``LookupError`` when there is none."""
        try:
            shard_text, offset_text = locator.split(":")
            index, offset = int(shard_text), int(offset_text)
            path = self.paths[index]
        except (ValueError, IndexError) as exc:
            raise LookupError(f"no record {locator!r} in run {self.run_id!r}") from exc
        try:
            if offset < 0 or (offset and _previous_byte(path, offset) != b"\n"):
                raise ValueError("not the start of a line")
            with path.open("rb") as handle:
                handle.seek(offset)
                line = handle.readline()
            record = orjson.loads(line)
        except ValueError as exc:
            raise LookupError(f"no record {locator!r} in run {self.run_id!r}") from exc
        return Entry(index, offset, record, line)

    def response(self, index: int, offset: int, record: dict[str, Any]) -> Any:
        """``record``'s response, following a ``response_ref`` back through its shard when it has one."""
        ref = record.get("response_ref")
        if record.get("response") is not None or not isinstance(ref, str):
            return record.get("response")
        known = self._refs.get((index, ref))
        if known is not None and known[0] < offset:
            self._refs.move_to_end((index, ref))
            return known[1]
        marker = b'"key":' + orjson.dumps(ref)
        for earlier, line in lines_backwards(self.paths[index], offset):
            if marker not in line or b'"response":null' in line:
                continue
            response = orjson.loads(line).get("response")
            if response is not None:
                self._refs[(index, ref)] = (earlier, response)
                if len(self._refs) > MAX_REMEMBERED_REFS:
                    self._refs.popitem(last=False)
                return response
        return None


def candidate_lines(path: Path, end: int, needle: bytes) -> Iterator[tuple[int, bytes]]:
    """The lines a text search must parse, last first: those holding ``needle`` (lower case), and hits.

    A line whose bytes, lowered, lack ``needle`` cannot match (:attr:`LogFilter.raw_needle`
    is only set when the text appears in the JSON as typed), unless it is a hit whose
    answer lives on another line (``response_ref``). Whole blocks are searched at C
    speed; only the lines found are split out, so a rare word costs two scans of the
    bytes (the text, the hits' marker), not a Python step per line.
    """
    # `regex` searches a literal case-insensitively in one pass over the raw bytes: about
    # half the CPU of bytes.lower() then find(); stdlib re's IGNORECASE is several times slower.
    pattern = regex.compile(regex.escape(needle), regex.IGNORECASE)

    def text_at(buf: bytes, start: int) -> int:
        found = pattern.search(buf, start)
        return -1 if found is None else found.start()

    def ref_at(buf: bytes, start: int) -> int:
        return buf.find(REF_MARKER, start)

    for pos, buf, first in blocks_backwards(path, end, SEARCH_BLOCK):
        starts = _line_starts(text_at, buf, first) | _line_starts(ref_at, buf, first)
        for start in sorted(starts, reverse=True):
            yield pos + start, _line(buf, start)


def _line(buf: bytes, start: int) -> bytes:
    return buf[start : buf.find(b"\n", start) + 1]


def _line_starts(find: Callable[[bytes, int], int], buf: bytes, first: int) -> set[int]:
    """Where each line of ``buf[first:]`` (whole lines) in which ``find`` finds something starts."""
    starts = set()
    found = find(buf, first)
    while found >= 0:
        starts.add(max(first, buf.rfind(b"\n", 0, found) + 1))
        found = find(buf, buf.find(b"\n", found) + 1)  # on from the next line
    return starts


def _newest_first(entry: Entry) -> float:
    ts = entry.record.get("ts_end") or entry.record.get("ts") or 0.0
    return -float(ts)


def _previous_byte(path: Path, offset: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset - 1)
        return handle.read(1)


def summary(entry: Entry, log: RunLog, preview: int = 80) -> dict[str, Any]:
    """The fields of one log row: when, how served, status, model, task, latency, and short texts."""
    record = entry.record
    return {
        "id": entry.locator,
        "ts": record.get("ts"),
        "served": record.get("served"),
        "status": record.get("status"),
        "error": error_code(record),
        "endpoint": record.get("endpoint"),
        "model": record.get("model"),
        "task": record.get("task"),
        "stream": bool(record.get("stream")),
        "sample": record.get("sample"),
        "latency_ms": record.get("latency_ms"),
        "ttft_ms": record.get("ttft_ms"),
        "key": record.get("key"),
        "prompt": _short(prompt_text(record.get("request")), preview),
        "answer": _short(answer_text(log.response(entry.shard, entry.offset, record)), preview),
    }


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
