"""The read-only runs dashboard at ``/ui``: every run, its live counters, and its report.

Counters come from the records themselves, read incrementally: each run
remembers how far into each shard it has read, and a poll folds in only the
complete lines appended since (any gateway process's), in a thread. So the
numbers match ``gateway report`` and keep up while a run is being written.
The report tab is the HTML report, rendered by the same code as
``gateway report --format html``. Pages poll a small JSON endpoint every 2 s.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from cache.records import shard_paths
from cache.runs import BadRunId, check_run_id, list_runs, run_dir
from gateway.errors import GatewayError, bad_request
from gateway.report.aggregate import Group, UnknownRun, build_report
from gateway.request_pages import RequestPages

JSON = "application/json"


@dataclass
class LiveRun:
    """A run's running totals, and how far into each shard they have read."""

    run_id: str
    total: Group = field(default_factory=lambda: Group("total"))
    offsets: dict[Path, int] = field(default_factory=dict)
    bytes: int = 0
    torn: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def catch_up(self, folder: Path) -> None:
        """Fold in the complete lines written since the last call (runs in a thread)."""
        size = 0
        for path in shard_paths(folder):
            offset = self.offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
            for line in data[:end].splitlines():
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.torn += 1
                    continue
                if isinstance(record, dict):
                    self.total.add(record)
            self.offsets[path] = offset + end
            size += offset + len(data)
        self.bytes = size

    def as_dict(self) -> dict[str, Any]:
        """The counters as JSON."""
        return {"run_id": self.run_id, "bytes": self.bytes, "torn_lines": self.torn, **self.total.as_dict()}


class Dashboard:
    """The ``/ui`` pages and their JSON, over one cache dir."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.runs: dict[str, LiveRun] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the dashboard's routes."""
        router.add_get("/ui", self.index)
        router.add_get("/ui/", self.index)
        router.add_get("/ui/api/runs", self.api_runs)
        router.add_get("/ui/api/runs/{run_id}", self.api_run)
        router.add_get("/ui/runs/{run_id}", self.run_page)
        router.add_get("/ui/runs/{run_id}/report", self.report)
        RequestPages(self.cache_dir).add_routes(router)

    async def live(self, run_id: str) -> LiveRun:
        """``run_id``'s counters, caught up with its shards."""
        try:
            folder = run_dir(self.cache_dir, run_id)
        except BadRunId as exc:
            raise bad_request(str(exc), "invalid_run_id") from exc
        if not folder.is_dir():
            raise GatewayError(404, f"no run {run_id!r}", "invalid_request_error", "run_not_found")
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = LiveRun(run_id)
        async with run.lock:
            await asyncio.to_thread(run.catch_up, folder)
        return run

    async def api_runs(self, request: web.Request) -> web.Response:
        """``GET /ui/api/runs``: every run's counters."""
        runs = [(await self.live(run_id)).as_dict() for run_id in list_runs(self.cache_dir)]
        return web.Response(body=orjson.dumps({"runs": runs}), content_type=JSON)

    async def api_run(self, request: web.Request) -> web.Response:
        """``GET /ui/api/runs/{run_id}``: one run's live counters."""
        run = await self.live(request.match_info["run_id"])
        return web.Response(body=orjson.dumps(run.as_dict()), content_type=JSON)

    async def index(self, request: web.Request) -> web.Response:
        """``GET /ui``: the runs."""
        return web.Response(text=INDEX_PAGE, content_type="text/html")

    async def run_page(self, request: web.Request) -> web.Response:
        """``GET /ui/runs/{run_id}``: live counters above the run's report."""
        run_id = request.match_info["run_id"]
        await self.live(run_id)  # 400 / 404 before any page
        page = RUN_PAGE.replace("__RUN_URL__", quote(run_id, safe="")).replace("__RUN_ID__", escape(run_id))
        page = page.replace("__RUN_JSON__", orjson.dumps(run_id).decode())
        return web.Response(text=page, content_type="text/html")

    async def report(self, request: web.Request) -> web.Response:
        """``GET /ui/runs/{run_id}/report``: the page ``gateway report --format html`` writes."""
        from gateway.report.html import render_html

        run_id = request.match_info["run_id"]
        try:
            check_run_id(run_id)
            report = await asyncio.to_thread(build_report, self.cache_dir, run_id, "model")
        except BadRunId as exc:
            raise bad_request(str(exc), "invalid_run_id") from exc
        except UnknownRun as exc:
            raise GatewayError(404, str(exc), "invalid_request_error", "run_not_found") from exc
        html = await asyncio.to_thread(render_html, report)
        return web.Response(text=html, content_type="text/html")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; } a { color: #1d6fa5; }
.meta { color: #666; margin-bottom: 1rem; font-size: .9rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border-bottom: 1px solid #eee; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.cards { display: flex; gap: .8rem; flex-wrap: wrap; margin-bottom: 1rem; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .9rem; min-width: 7.5rem; }
.card .v { font-size: 1.3rem; font-weight: 600; } .card .k { color: #666; font-size: .8rem; }
.live { display: inline-block; width: .6rem; height: .6rem; border-radius: 50%; background: #2a9d8f; }
iframe { width: 100%; height: 1250px; border: 1px solid #ddd; border-radius: 6px; }
"""

SCRIPT_HELPERS = """
const fmt = (v, d) => v === null || v === undefined ? '-' :
  (typeof v === 'number' ? v.toLocaleString('en-US', {maximumFractionDigits: d ?? 3}) : String(v));
// A free (local) model's cost is no figure at all, not $0.000000.
const usd = (v, free) => free ? '—' : '$' + (v || 0).toLocaleString('en-US', {maximumSignificantDigits: 3});
const ENTITIES = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'};
const esc = s => String(s).replace(/[&<>"]/g, c => ENTITIES[c]);
const when = ts => ts ? new Date(ts * 1000).toISOString().replace('T', ' ').slice(0, 19) + ' UTC' : '-';
"""

INDEX_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>replaygate runs</title><style>{STYLE}</style></head>
<body>
<h1>replaygate runs</h1>
<div class="meta"><a href="/ui/compare">compare two runs</a></div>
<div class="meta"><span class="live"></span> refreshed every 2 s · <span id="updated">loading…</span></div>
<table id="runs"><thead><tr><th>run</th><th>requests</th><th>hit ratio</th><th>tokens in</th>
<th>tokens out</th><th>cost (USD)</th><th>saved (USD)</th><th>errors</th><th>MB</th>
<th>first</th><th>last</th></tr></thead><tbody></tbody></table>
<script>
{SCRIPT_HELPERS}
async function refresh() {{
  try {{
    const data = await (await fetch('/ui/api/runs')).json();
    document.querySelector('#runs tbody').innerHTML = data.runs.map(r => `<tr data-run="${{esc(r.run_id)}}">
      <td><a href="/ui/runs/${{encodeURIComponent(r.run_id)}}">${{esc(r.run_id)}}</a></td>
      <td class="requests">${{fmt(r.requests)}}</td><td>${{fmt(r.hit_ratio * 100, 1)}}%</td>
      <td>${{fmt(r.tokens_in)}}</td><td>${{fmt(r.tokens_out)}}</td><td>${{usd(r.cost_usd, r.free)}}</td>
      <td>${{usd(r.cost_saved_usd, r.free)}}</td>
      <td>${{fmt(Object.values(r.errors).reduce((a, b) => a + b, 0))}}</td>
      <td>${{fmt(r.bytes / 1e6)}}</td><td>${{when(r.first_ts)}}</td>
      <td>${{when(r.last_ts)}}</td></tr>`).join('')
      || '<tr><td colspan="11">no runs yet</td></tr>';
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  }} catch (e) {{ document.getElementById('updated').textContent = 'cannot reach the gateway'; }}
}}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""

RUN_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>run __RUN_ID__ · replaygate</title>
<style>{STYLE}</style></head>
<body>
<div class="meta"><a href="/ui">← all runs</a></div>
<h1>Run <span id="run-id">__RUN_ID__</span></h1>
<div class="meta"><span class="live"></span> live counters, refreshed every 2 s ·
<span id="updated">loading…</span></div>
<div class="meta"><a id="request-log" href="/ui/runs/__RUN_URL__/requests">request log</a> ·
errors: <span id="errors">none</span></div>
<div class="cards" id="counters"></div>
<div class="meta">Report as of page load ·
<a href="/ui/runs/__RUN_ID__/report" target="_blank">open on its own</a> ·
<a href="#" onclick="document.getElementById('report').src += ''; return false">reload</a></div>
<iframe id="report" src="/ui/runs/__RUN_ID__/report" title="report"></iframe>
<script>
{SCRIPT_HELPERS}
const RUN = __RUN_JSON__;
async function refresh() {{
  try {{
    const r = await (await fetch('/ui/api/runs/' + encodeURIComponent(RUN))).json();
    const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
    const cards = [
      ['requests', fmt(r.requests)], ['hits', fmt(r.served.hit)], ['coalesced', fmt(r.served.coalesced)],
      ['misses', fmt(r.served.miss)], ['batched', fmt(r.served.batched)],
      ['hit ratio', fmt(r.hit_ratio * 100, 1) + '%'], ['tokens in', fmt(r.tokens_in)],
      ['tokens out', fmt(r.tokens_out)], ['cost', usd(r.cost_usd, r.free)],
      ['saved', usd(r.cost_saved_usd, r.free)],
      ['errors', fmt(errors)], ['cached p50 ms', fmt(r.latency_ms.cached.p50)],
      ['upstream p50 ms', fmt(r.latency_ms.upstream.p50)],
      ['upstream p95 ms', fmt(r.latency_ms.upstream.p95)],
      ['req/s', fmt(r.throughput_rps, 2)], ['last answer', when(r.last_ts)],
    ];
    const log = '/ui/runs/' + encodeURIComponent(RUN) + '/requests?status=';
    document.getElementById('errors').innerHTML = Object.entries(r.errors).map(([code, n]) =>
      `<a class="error-link" href="${{esc(log + encodeURIComponent(code))}}">${{esc(code)}}: ${{fmt(n)}}</a>`
    ).join(' · ') || 'none';
    document.getElementById('counters').innerHTML = cards.map(([k, v]) =>
      `<div class="card" data-key="${{esc(k)}}"><div class="v">${{esc(v)}}</div>` +
      `<div class="k">${{esc(k)}}</div></div>`
    ).join('');
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  }} catch (e) {{ document.getElementById('updated').textContent = 'cannot reach the gateway'; }}
}}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
