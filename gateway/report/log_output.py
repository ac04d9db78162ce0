"""``gateway log``'s output, streamed: a fixed-width table, a JSON array, or JSON lines as stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

import orjson

from gateway.report.log import Entry, RunLog, summary
from gateway.report.render import cell

LogFormat = Literal["table", "json", "jsonl"]
# Column -> width; text is cut to fit, so a row is printed as soon as it is read.
TABLE_COLUMNS = {
    "time (UTC)": 19,
    "served": 9,
    "status": 6,
    "error": 16,
    "model": 14,
    "task": 10,
    "ms": 9,
    "key": 12,
    "prompt": 40,
    "answer": 40,
}


def lines(log: RunLog, entries: Iterator[Entry], fmt: LogFormat) -> Iterator[str]:
    """The output, line by line (without newlines), as ``entries`` are read."""
    if fmt == "jsonl":
        for entry in entries:
            yield entry.raw.rstrip(b"\n").decode()  # the record exactly as the run holds it
        return
    if fmt == "json":
        first = True
        yield "["
        for entry in entries:
            yield ("  " if first else ", ") + orjson.dumps(entry.record).decode()
            first = False
        yield "]"
        return
    yield "  ".join(name.ljust(width) for name, width in TABLE_COLUMNS.items()).rstrip()
    yield "  ".join("-" * width for width in TABLE_COLUMNS.values())
    for entry in entries:
        row = summary(entry, log, preview=40)
        ts = row["ts"]
        values = {
            "time (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "—",
            "served": row["served"],
            "status": row["status"],
            "error": row["error"],
            "model": row["model"],
            "task": row["task"],
            "ms": row["latency_ms"],
            "key": (row["key"] or "")[:12],
            "prompt": row["prompt"],
            "answer": row["answer"],
        }
        yield "  ".join(_fit(values[name], width) for name, width in TABLE_COLUMNS.items()).rstrip()


def _fit(value: object, width: int) -> str:
    text = cell(value) if value is not None else "—"
    text = text.replace("\n", " ")
    if len(text) > width:
        text = text[: width - 1] + "…"
    return (
        text.rjust(width)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else text.ljust(width)
    )
