"""Bar charts as inline SVG, drawn in Python: a report page needs no script and no chart library.

One shape serves every chart of the report: labelled bars, one or more
series, stacked or side by side, each bar titled with its exact value (the
browser shows it on hover). Every label is escaped, so a model or task name
is text, never markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from gateway.report.render import human

WIDTH, HEIGHT = 600, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 10, 34, 58
MAX_TICK_LABELS = 8


@dataclass(frozen=True)
class Series:
    """One series of a bar chart: its name, colour and one value per label."""

    name: str
    colour: str
    values: Sequence[float]


def bar_chart(
    chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], *, stacked: bool, y_title: str
) -> str:
    """An SVG bar chart of ``series`` over ``labels``, with a legend and a y axis."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(1, len(labels))
    if stacked:
        top = max([sum(s.values[i] for s in series) for i in range(len(labels))] or [0])
    else:
        top = max([v for s in series for v in s.values] or [0])
    top = top or 1
    slot = plot_w / n
    bar_w = slot * 0.8 / (1 if stacked else max(1, len(series)))
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" class="title">{escape(title)}</text>',
    ]
    for k in range(5):  # gridlines and y ticks
        value = top * k / 4
        y = TOP + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(_tick(value))}</text>')
    parts.append(
        f'<text x="12" y="{TOP + plot_h / 2}" transform="rotate(-90 12 {TOP + plot_h / 2})" '
        f'text-anchor="middle">{escape(y_title)}</text>'
    )
    for i, label in enumerate(labels):
        base = 0.0
        for j, s in enumerate(series):
            value = s.values[i]
            h = plot_h * value / top
            x = LEFT + slot * i + slot * 0.1 + (0 if stacked else j * bar_w)
            y = TOP + plot_h - h - (plot_h * base / top if stacked else 0)
            if value:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w, 0.5):.1f}" height="{h:.1f}" '
                    f'fill="{s.colour}"><title>{escape(f"{label} · {s.name}: {_tick(value)}")}</title></rect>'
                )
            if stacked:
                base += value
    every = max(1, -(-len(labels) // MAX_TICK_LABELS))
    for i in range(0, len(labels), every):
        x = LEFT + slot * (i + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{TOP + plot_h + 14}" text-anchor="middle" class="x">'
            f"{escape(_short(labels[i]))}</text>"
        )
    for j, s in enumerate(series):  # legend
        x = LEFT + j * 130
        y = HEIGHT - 12
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{s.colour}"/>')
        parts.append(f'<text x="{x + 14}" y="{y}" class="legend">{escape(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _tick(value: float) -> str:
    return human(float(value))


def _short(label: str, limit: int = 18) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
