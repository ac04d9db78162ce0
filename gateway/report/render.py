"""A run report as a terminal table, CSV or JSON (HTML lives in :mod:`gateway.report.html`)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import orjson

from cache.record import SERVED
from gateway.report.aggregate import NO_TASK, RunReport

COLUMNS = (
    "group",
    "requests",
    "tokenizer",
    *SERVED,
    "hit_ratio",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "cost_batch_usd",
    "cost_saved_usd",
    "errors",
    "cached_p50_ms",
    "cached_max_ms",
    "upstream_p50_ms",
    "upstream_p95_ms",
    "upstream_p99_ms",
    "upstream_max_ms",
    "req_per_s",
)
NONE = "—"  # no figure: a free model's cost, a latency with no requests, a rate of one request


# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """``value`` as a CSV cell no spreadsheet will run: text that starts like a formula gets a leading ``'``.

    Group names come from clients (``X-Task``, a run's model names), so
    ``=HYPERLINK(...)`` must reach a spreadsheet as text. Numbers stay
    numbers (a negative one is no formula), and the bare ``-`` of "no task" is
    plain text to every spreadsheet.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and value != NO_TASK:
        return "'" + value
    return value


def rows(report: RunReport) -> list[dict[str, Any]]:
    """One flat row per group, then the total; a free group's costs are None (shown as "—")."""
    data = report.as_dict()
    out = []
    for group in [*data["groups"], data["total"]]:
        cached, upstream = group["latency_ms"]["cached"], group["latency_ms"]["upstream"]
        free = group["free"]
        out.append(
            {
                "group": group["name"],
                "requests": group["requests"],
                "tokenizer": group["tokenizer_calls"],
                **{str(k): group["served"][k] for k in SERVED},
                "hit_ratio": group["hit_ratio"],
                "tokens_in": group["tokens_in"],
                "tokens_out": group["tokens_out"],
                "cost_usd": None if free else group["cost_usd"],
                "cost_batch_usd": None if free else group["cost_batch_usd"],
                "cost_saved_usd": None if free else group["cost_saved_usd"],
                "errors": " ".join(f"{code}:{n}" for code, n in group["errors"].items()),
                "cached_p50_ms": cached["p50"],
                "cached_max_ms": cached["max"],
                "upstream_p50_ms": upstream["p50"],
                "upstream_p95_ms": upstream["p95"],
                "upstream_p99_ms": upstream["p99"],
                "upstream_max_ms": upstream["max"],
                "req_per_s": group["throughput_rps"],
            }
        )
    return out


def to_json(report: RunReport) -> str:
    """The report as indented JSON."""
    return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()


def to_csv(report: RunReport) -> str:
    """One CSV line per group and the total, with a header."""
    buffer = io.StringIO()
    # Every text cell quoted: with "\n" line ends, minimal quoting would leave a lone "\r" bare,
    # and a spreadsheet would start a new row (and maybe a formula) there.
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    writer.writerows({column: csv_safe(value) for column, value in row.items()} for row in rows(report))
    return buffer.getvalue()


def human(value: float) -> str:
    """A number for people: three significant digits (no trailing zeros), thousands separated.

    ``0.009`` not ``0.009000``, ``0.000123`` not ``1.23e-04``, ``12.3``, ``1,224``.
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def cell(value: Any) -> str:
    """One value as a table cell: integers exact with separators, other numbers :func:`human`, None as "—"."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return human(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value) or NONE


def table(headers: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table: text left, numbers right."""
    cells = [[cell(v) for v in row] for row in body]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], int | float) or r[i] is None for r in body) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def to_table(report: RunReport) -> str:
    """The report for a terminal: a heading line, then one row per group and the total."""
    flat = rows(report)
    heading = (
        f"run {report.run_id}: {report.read.lines:,} records by {report.by}"
        + (f", {len(report.read.torn)} torn line(s) skipped" if report.read.torn else "")
        + (f", {report.total.unpriced} without a known price" if report.total.unpriced else "")
    )
    return heading + "\n" + table(COLUMNS, [[row[c] for c in COLUMNS] for row in flat])
