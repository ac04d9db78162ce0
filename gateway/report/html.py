"""A run report as one self-contained HTML file: inline SVG charts, no network and no script needed.

Charts: requests and tokens over time, the latency distribution (cached
answers apart from upstream ones), cost and savings by group, and how the
requests were served. The same page is the report tab of the ``/ui`` dashboard.
It used to inline plotly.js (4.9 MB for a 3,000-record run); drawn as SVG it
is a few tens of kB.
"""

from __future__ import annotations

import time
from html import escape

from gateway.report.aggregate import LATENCY_EDGES_MS, RunReport
from gateway.report.charts import Series, bar_chart
from gateway.report.render import COLUMNS, NONE, cell, human, rows

MAX_POINTS = 240  # time series longer than this are shown per hour instead of per minute
COLOURS = {"cached": "#2a9d8f", "upstream": "#e76f51", "in": "#264653", "out": "#e9c46a"}
SERVED_COLOURS = {
    "hit": "#2a9d8f",
    "coalesced": "#8ab17d",
    "miss": "#e76f51",
    "batched": "#f4a261",
    "batch": "#e9c46a",
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>replaygate report: {run}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
h1 {{ font-size: 1.4rem; margin: 0 0 .3rem; }}
.meta {{ color: #666; margin-bottom: 1rem; }}
.cards {{ display: flex; gap: .8rem; flex-wrap: wrap; margin-bottom: 1rem; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .5rem .9rem; min-width: 8rem; }}
.card .v {{ font-size: 1.3rem; font-weight: 600; }}
.card .k {{ color: #666; font-size: .8rem; }}
.charts {{ display: grid; grid-template-columns: 1fr 1fr; gap: .5rem; }}
svg.chart {{ width: 100%; height: auto; border: 1px solid #eee; border-radius: 6px; font-size: 10px; }}
svg.chart .title {{ font-size: 13px; font-weight: 600; }}
svg.chart .grid {{ stroke: #eee; }}
svg.chart text {{ fill: #444; }}
.table {{ overflow-x: auto; margin-top: 1rem; }}
table {{ border-collapse: collapse; font-size: .8rem; }}
th, td {{ border-bottom: 1px solid #eee; padding: .25rem .5rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.total td {{ font-weight: 600; border-top: 2px solid #999; }}
</style></head>
<body>
<h1>Run <span id="run-id">{run}</span></h1>
<div class="meta">{meta}</div>
<div class="cards">{cards}</div>
<div class="charts">{charts}</div>
<div class="table"><table id="groups"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
</body></html>
"""


def render_html(report: RunReport) -> str:
    """The whole report page."""
    total = report.total
    cached, upstream = total.cached_latency, total.upstream_latency
    cards = [
        ("requests", f"{total.requests:,}"),
        ("tokenizer calls", f"{total.tokenizer_calls:,}"),
        ("hit ratio", f"{total.hit_ratio:.1%}"),
        ("tokens in / out", f"{total.tokens_in:,} / {total.tokens_out:,}"),
        ("cost (USD)", NONE if total.free else human(total.cost_usd)),
        ("of which batch (USD)", NONE if total.free else human(total.batch_cost_usd)),
        ("saved (USD)", NONE if total.free else human(total.cost_saved_usd)),
        ("cached p50 / max ms", f"{cell(cached.quantile(0.5))} / {cell(cached.max)}"),
        (
            "upstream p50 / p95 / p99 / max ms",
            " / ".join(cell(upstream.quantile(q)) for q in (0.5, 0.95, 0.99)) + f" / {cell(upstream.max)}",
        ),
        ("errors", f"{sum(total.errors.values()):,}"),
    ]
    card_html = "".join(
        f'<div class="card" data-key="{escape(k)}"><div class="v">{escape(v)}</div>'
        f'<div class="k">{escape(k)}</div></div>'
        for k, v in cards
    )
    charts = "".join([*_timeline(report), _latency(report), _cost(report), _served(report)])
    flat = rows(report)
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        f'<tr class="{"total" if i == len(flat) - 1 else "group"}">'
        + "".join(f"<td>{escape(cell(row[c]))}</td>" for c in COLUMNS)
        + "</tr>"
        for i, row in enumerate(flat)
    )
    span = "empty"
    if total.requests:
        span = f"{_when(total.first_ts)} → {_when(total.last_ts)} ({total.span_s:,.1f} s)"
    meta = (
        f"{report.read.lines:,} records by {escape(report.by)} · {span}"
        + (f" · {len(report.read.torn)} torn line(s) skipped" if report.read.torn else "")
        + f" · generated {_when(report.generated)}"
    )
    return PAGE.format(
        run=escape(report.run_id), meta=meta, cards=card_html, charts=charts, head=head, body=body
    )


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _timeline(report: RunReport) -> list[str]:
    minutes = report.timeline.minutes
    step = 60 if len(minutes) <= MAX_POINTS else 3600
    buckets: dict[int, list[int]] = {}
    for minute, row in minutes.items():
        into = buckets.setdefault(minute * 60 // step * step, [0, 0, 0, 0, 0])
        for i, value in enumerate(row):
            into[i] += value
    xs = sorted(buckets)
    stamps = [time.strftime("%m-%d %H:%M", time.gmtime(x)) for x in xs]
    unit = "minute" if step == 60 else "hour"
    requests = bar_chart(
        "chart-timeline",
        f"Requests per {unit}",
        stamps,
        [
            Series("cached", COLOURS["cached"], [buckets[x][3] for x in xs]),
            Series("upstream", COLOURS["upstream"], [buckets[x][4] for x in xs]),
        ],
        stacked=True,
        y_title="requests",
    )
    tokens = bar_chart(
        "chart-tokens",
        f"Tokens per {unit}",
        stamps,
        [
            Series("tokens in", COLOURS["in"], [buckets[x][1] for x in xs]),
            Series("tokens out", COLOURS["out"], [buckets[x][2] for x in xs]),
        ],
        stacked=True,
        y_title="tokens",
    )
    return [requests, tokens]


def _latency(report: RunReport) -> str:
    edges = (0.0, *LATENCY_EDGES_MS)
    hist = report.latency
    used = [k for k in range(len(hist.cached)) if hist.cached[k] or hist.upstream[k]]
    ks = list(range(used[0], used[-1] + 1)) if used else []
    labels = [f"≤{human(edges[k + 1])}" if k + 1 < len(edges) else f">{human(edges[-1])}" for k in ks]
    return bar_chart(
        "chart-latency",
        "Latency distribution (ms, log buckets)",
        labels,
        [
            Series("cached", COLOURS["cached"], [hist.cached[k] for k in ks]),
            Series("upstream", COLOURS["upstream"], [hist.upstream[k] for k in ks]),
        ],
        stacked=False,
        y_title="requests",
    )


def _cost(report: RunReport) -> str:
    names = sorted(report.groups)
    return bar_chart(
        "chart-cost",
        f"Cost by {report.by} (USD)",
        names,
        [
            Series("paid", COLOURS["upstream"], [report.groups[n].cost_usd for n in names]),
            Series("saved", COLOURS["cached"], [report.groups[n].cost_saved_usd for n in names]),
        ],
        stacked=False,
        y_title="USD",
    )


def _served(report: RunReport) -> str:
    served = report.total.served
    labels = [k for k in SERVED_COLOURS if served.get(k)]
    labels += sorted(k for k in served if k not in labels)
    return bar_chart(
        "chart-served",
        "Hits vs misses",
        labels,
        [Series("requests", "#1d6fa5", [served[k] for k in labels])],
        stacked=True,
        y_title="requests",
    )
