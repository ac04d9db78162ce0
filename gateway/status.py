"""The live status line ``gateway serve`` keeps at the bottom of a terminal.

Once a second: requests/s, hit ratio, cost so far (and saved), queue depth
and calls in flight, read from the metrics' running totals and the
schedulers. Drawn only on a terminal; log lines clear it before they print.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

from aiohttp import web

from gateway.metrics import Metrics

CLEAR = "\r\x1b[2K"


class StatusLine:
    """Redraws one line on ``stream`` every ``interval`` seconds."""

    def __init__(self, metrics: Metrics, stream: TextIO = sys.stderr, interval: float = 1.0) -> None:
        self.metrics = metrics
        self.stream = stream
        self.interval = interval
        self._last = (time.monotonic(), 0)

    def text(self) -> str:
        """The current line."""
        now = time.monotonic()
        totals = self.metrics.totals
        then, count = self._last
        self._last = (now, totals.requests)
        rate = (totals.requests - count) / max(now - then, 1e-9)
        unpriced = f" ({totals.unpriced:,} unpriced)" if totals.unpriced else ""
        upstreams = self.metrics.upstreams.values()
        queued = sum(u.scheduler.queue_depth for u in upstreams)
        running = sum(u.scheduler.in_flight for u in upstreams)
        return (
            f"gateway · {rate:,.1f} req/s · {totals.requests:,} requests · hit {totals.hit_ratio:.1%} · "
            f"${totals.cost_usd:,.6f} spent, ${totals.cost_saved_usd:,.6f} saved{unpriced} · "
            f"queue {queued} · in flight {running} · errors {totals.failed:,}"
        )

    def draw(self) -> None:
        """Write the line over the previous one."""
        self.stream.write(CLEAR + self.text())
        self.stream.flush()

    async def run(self) -> None:
        """Redraw until cancelled."""
        while True:
            self.draw()
            await asyncio.sleep(self.interval)


class _ClearLine(logging.Filter):
    """Clears the status line before a log record is printed over it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def filter(self, record: logging.LogRecord) -> bool:
        self.stream.write(CLEAR)
        return True


def status_line_context(metrics_key: web.AppKey[Metrics]):  # type: ignore[no-untyped-def]
    """An aiohttp cleanup context that shows the status line while the app runs."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        line = StatusLine(app[metrics_key])
        clear = _ClearLine(line.stream)
        for handler in logging.getLogger().handlers:
            handler.addFilter(clear)
        task = asyncio.create_task(line.run())
        yield
        task.cancel()
        line.stream.write(CLEAR)
        line.stream.flush()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(clear)

    return context


def wanted(quiet: bool, stream: TextIO = sys.stderr) -> bool:
    """Show the line unless asked not to, and only on a terminal."""
    return not quiet and stream.isatty()
