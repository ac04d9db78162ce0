"""Run reports: what a run cost, what the cache saved, and how fast it went, read from its records.

``build_report`` streams a run's JSONL once into a :class:`RunReport`;
``render`` turns it into a table, CSV, JSON or a self-contained HTML page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from gateway.report.aggregate import GroupBy, RunReport, UnknownRun, build_report
from gateway.report.render import to_csv, to_json, to_table
from gateway.report.runs import RunSummary, summarise, summarise_all

Format = Literal["table", "json", "csv", "html"]

__all__ = [
    "Format",
    "GroupBy",
    "RunReport",
    "RunSummary",
    "UnknownRun",
    "build_report",
    "render",
    "summarise",
    "summarise_all",
]


def render(report: RunReport, fmt: Format) -> str:
    """``report`` in format ``fmt``."""
    if fmt == "html":
        from gateway.report.html import render_html

        return render_html(report)
    renderers: dict[str, Callable[[RunReport], str]] = {"table": to_table, "json": to_json, "csv": to_csv}
    return renderers[fmt](report)
