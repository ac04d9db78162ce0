"""A JSONL shard read backwards, in fixed-size blocks or line by line: newest records first, bounded memory.

Memory is one block plus the longest line. A shard's last line may still be
being written (or was torn by a crash): reading starts at the last newline,
so only complete lines are ever returned.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

BLOCK = 256 * 1024


def complete_end(path: Path) -> int:
    """The offset just past the last complete line of ``path`` (0 when it has none)."""
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            size = min(BLOCK, pos)
            pos -= size
            handle.seek(pos)
            chunk = handle.read(size)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return pos + newline + 1
        return 0


def blocks_backwards(
    path: Path, end: int | None = None, block: int | None = None
) -> Iterator[tuple[int, bytes, int]]:
    """``(offset, buf, first)``: ``buf`` read at ``offset``, ``buf[first:]`` whole lines; last block first.

    ``buf[first:]`` starts at a line start and ends just past a newline, so a
    search over it never sees half a line; together they cover every whole
    line before ``end``, each once. ``buf[:first]`` is the end of a line the
    next (older) block holds: the block is not sliced, because a copy of
    every block costs as much as reading it. A line longer than ``block``
    grows the block. ``end`` must be a line boundary, as for :func:`lines_backwards`.
    """
    if end is None:
        end = complete_end(path)
    size = block or BLOCK
    with path.open("rb", buffering=0) as handle:
        while end > 0:
            pos = max(0, end - size)
            buf = os.pread(handle.fileno(), end - pos, pos)
            first = buf.find(b"\n") + 1 if pos > 0 else 0  # before it: a line begun further back
            if pos > 0 and first in (0, len(buf)):
                size *= 2  # no whole line in this block: read more of it
                continue
            yield pos, buf, first
            end = pos + first


def lines_backwards(
    path: Path, end: int | None = None, block: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of each complete line of ``path`` that ends at or before ``end``, last first.

    ``end`` must be a line boundary (0, or just past a newline): a cursor
    handed out as an ``offset`` from here is one. Lines keep their newline.
    """
    for pos, buf, first in blocks_backwards(path, end, block):
        stop = len(buf)
        while stop > first:
            start = buf.rfind(b"\n", first, stop - 1) + 1 or first
            yield pos + start, buf[start:stop]
            stop = start
