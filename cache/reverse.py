"""A JSONL shard read backwards, line by line, in fixed-size blocks: newest records first, bounded memory.

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


def lines_backwards(path: Path, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of each complete line of ``path`` that ends at or before ``end``, last first.

    ``end`` must be a line boundary (0, or just past a newline): a cursor
    handed out as an ``offset`` from here is one. Lines keep their newline.
    """
    if end is None:
        end = complete_end(path)
    with path.open("rb") as handle:
        pos = end
        tail = b""  # the start of a line whose beginning lies in an earlier block
        while pos > 0:
            size = min(BLOCK, pos)
            pos -= size
            handle.seek(pos)
            buf = handle.read(size) + tail
            # buf covers [pos, pos + len(buf)) and ends with a newline; its first part may be cut.
            stop = len(buf)
            while True:
                newline = buf.rfind(b"\n", 0, stop - 1)
                if newline < 0:
                    break
                yield pos + newline + 1, buf[newline + 1 : stop]
                stop = newline + 1
            tail = buf[:stop]
        if tail:
            yield 0, tail
