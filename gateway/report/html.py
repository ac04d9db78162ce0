"""A run report as one self-contained HTML file: plotly.js is inlined, so it opens with no network.

Charts: requests and tokens over time, the latency distribution (cached
answers apart from upstream ones), cost and savings by group, and how the
requests were served. The same page is the report tab of the ``/ui`` dashboard.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gateway.report.aggregate import LATENCY_EDGES_MS, RunReport
from gateway.report.render import COLUMNS, cell, rows

MAX_POINTS = 1500  # time series longer than this are shown per hour instead of per minute
COLOURS = {"cached": "#2a9d8f", "upstream": "#e76f51", "in": "#264653", "out": "#e9c46a"}

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
    data = total.as_dict()
    cards = [
        ("requests", f"{total.requests:,}"),
        ("hit ratio", f"{total.hit_ratio:.1%}"),
        ("tokens in / out", f"{total.tokens_in:,} / {total.tokens_out:,}"),
        ("cost (USD)", f"{total.cost_usd:,.6f}"),
        ("saved (USD)", f"{total.cost_saved_usd:,.6f}"),
        ("p50 / p95 / p99 ms", " / ".join(cell(data["latency_ms"][q]) for q in ("p50", "p95", "p99"))),
        ("errors", f"{sum(total.errors.values()):,}"),
    ]
    card_html = "".join(
        f'<div class="card" data-key="{escape(k)}"><div class="v">{escape(v)}</div>'
        f'<div class="k">{escape(k)}</div></div>'
        for k, v in cards
    )
    figures = [
        ("chart-timeline", _timeline(report)),
        ("chart-latency", _latency(report)),
        ("chart-cost", _cost(report)),
        ("chart-served", _served(report)),
    ]
    charts = "".join(
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=div_id, config={"displaylogo": False})
        for i, (div_id, fig) in enumerate(figures)
    )
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


def _layout(fig: go.Figure, title: str, **extra: Any) -> go.Figure:
    fig.update_layout(
        title=title, height=340, margin={"l": 50, "r": 20, "t": 45, "b": 40}, template="plotly_white", **extra
    )
    return fig


def _timeline(report: RunReport) -> go.Figure:
    minutes = report.timeline.minutes
    step = 60 if len(minutes) <= MAX_POINTS else 3600
    buckets: dict[int, list[int]] = {}
    for minute, row in minutes.items():
        into = buckets.setdefault(minute * 60 // step * step, [0, 0, 0, 0, 0])
        for i, value in enumerate(row):
            into[i] += value
    xs = sorted(buckets)
    stamps = [time.strftime("%Y-%m-%d %H:%M", time.gmtime(x)) for x in xs]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=stamps, y=[buckets[x][3] for x in xs], name="cached", marker_color=COLOURS["cached"])
    fig.add_bar(x=stamps, y=[buckets[x][4] for x in xs], name="upstream", marker_color=COLOURS["upstream"])
    for i, kind in ((1, "in"), (2, "out")):
        fig.add_trace(
            go.Scatter(
                x=stamps, y=[buckets[x][i] for x in xs], name=f"tokens {kind}", line_color=COLOURS[kind]
            ),
            secondary_y=True,
        )
    fig.update_yaxes(title_text="requests", secondary_y=False)
    fig.update_yaxes(title_text="tokens", secondary_y=True)
    unit = "minute" if step == 60 else "hour"
    return _layout(fig, f"Requests and tokens per {unit}", barmode="stack")


def _latency(report: RunReport) -> go.Figure:
    edges = (0.0, *LATENCY_EDGES_MS)
    used = [
        k for k in range(len(report.latency.cached)) if report.latency.cached[k] or report.latency.upstream[k]
    ]
    fig = go.Figure()
    if used:
        ks = list(range(used[0], used[-1] + 1))
        labels = [f"≤{_ms(edges[k + 1])}" if k + 1 < len(edges) else f">{_ms(edges[-1])}" for k in ks]
        for kind, counts in (("cached", report.latency.cached), ("upstream", report.latency.upstream)):
            fig.add_bar(x=labels, y=[counts[k] for k in ks], name=kind, marker_color=COLOURS[kind])
        decades = [label for k, label in zip(ks, labels, strict=True) if k % 10 == 0]
        fig.update_xaxes(tickmode="array", tickvals=decades, ticktext=[d.lstrip("≤") for d in decades])
    fig.update_xaxes(title_text="latency (ms, log buckets)")
    fig.update_yaxes(title_text="requests")
    return _layout(fig, "Latency distribution", barmode="overlay", bargap=0.05)


def _ms(value: float) -> str:
    return f"{value:.3g}"


def _cost(report: RunReport) -> go.Figure:
    names = sorted(report.groups)
    fig = go.Figure()
    fig.add_bar(x=names, y=[report.groups[n].cost_usd for n in names], name="paid", marker_color="#e76f51")
    fig.add_bar(
        x=names, y=[report.groups[n].cost_saved_usd for n in names], name="saved", marker_color="#2a9d8f"
    )
    fig.update_yaxes(title_text="USD")
    return _layout(fig, f"Cost by {report.by}", barmode="group")


def _served(report: RunReport) -> go.Figure:
    served = report.total.served
    labels = [k for k in ("hit", "coalesced", "miss", "batched") if served.get(k)]
    labels += sorted(k for k in served if k not in labels)
    colours = {"hit": "#2a9d8f", "coalesced": "#8ab17d", "miss": "#e76f51", "batched": "#f4a261"}
    fig = go.Figure(
        go.Pie(
            labels=labels,
            values=[served[k] for k in labels],
            marker={"colors": [colours.get(k, "#999") for k in labels]},
            hole=0.45,
            sort=False,
        )
    )
    return _layout(fig, "Hits vs misses")
