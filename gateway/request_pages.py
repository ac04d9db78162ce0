"""The ``/ui`` request log, request view, "why did this miss?" and run comparison pages.

Rendered on the server as plain HTML with no script at all: every value that
came from a client or a model is escaped (:func:`html.escape`), and the
pages are served with a Content-Security-Policy that forbids scripts, so an
answer holding ``<script>`` or ``<img onerror>`` is shown as text and can
never run. Reading is done in a thread with :class:`gateway.report.log.RunLog`
(a page costs the lines it shows) and :func:`gateway.report.diff.diff_runs`.
"""

from __future__ import annotations

import asyncio
import time
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

from cache.explain import NoSuchRequest, explain
from cache.keys import canonical_fields
from cache.record import SERVED
from cache.runs import BadRunId, check_run_id
from gateway.errors import GatewayError, bad_request
from gateway.report.aggregate import UnknownRun
from gateway.report.diff import Match, diff_runs, totals_rows
from gateway.report.log import Cursor, LogFilter, RunLog, summary
from gateway.report.render import cell
from gateway.report.sample_flips import FLIPS_HEADER, TaskFlips, flips_rows, ids_text

PAGE_SIZE = 50
NO_SCRIPT = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'self'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; } h2 { font-size: 1.1rem; margin: 1.2rem 0 .4rem; }
a { color: #1d6fa5; } .meta { color: #666; margin-bottom: 1rem; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { border-bottom: 1px solid #eee; padding: .25rem .5rem; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: .6rem; border-radius: 4px; white-space: pre-wrap; word-break: break-word;
  max-height: 30rem; overflow: auto; font-size: .8rem; }
form.filters { display: flex; gap: .5rem; flex-wrap: wrap; margin-bottom: 1rem; align-items: end; }
form.filters label { display: flex; flex-direction: column; font-size: .75rem; color: #555; }
.msg { border: 1px solid #ddd; border-radius: 6px; padding: .4rem .6rem; margin: .3rem 0; }
.msg .role { font-size: .75rem; color: #666; } .msg .text { white-space: pre-wrap; }
.err { color: #b00020; } .served-hit, .served-coalesced { color: #2a9d8f; } .served-miss { color: #e76f51; }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: .5rem; }
"""


def _page(title: str, body: str) -> web.Response:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · replaygate'
        f"</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )
    return web.Response(text=html, content_type="text/html", headers={"Content-Security-Policy": NO_SCRIPT})


def _pre(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return f"<pre>{escape(text)}</pre>"


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if isinstance(ts, int | float) else "—"


def _run_url(run_id: str, rest: str = "") -> str:
    return f"/ui/runs/{quote(run_id, safe='')}{rest}"


class RequestPages:
    """The request log pages over one cache dir."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the pages."""
        router.add_get("/ui/runs/{run_id}/requests", self.log_page)
        router.add_get("/ui/runs/{run_id}/requests/{locator}", self.request_page)
        router.add_get("/ui/runs/{run_id}/requests/{locator}/explain", self.explain_page)
        router.add_get("/ui/compare", self.compare_page)

    def _log(self, run_id: str) -> RunLog:
        try:
            check_run_id(run_id)
            return RunLog(self.cache_dir, run_id)
        except BadRunId as exc:
            raise bad_request(str(exc), "invalid_run_id") from exc
        except UnknownRun as exc:
            raise GatewayError(404, str(exc), "invalid_request_error", "run_not_found") from exc

    async def log_page(self, request: web.Request) -> web.Response:
        """``GET /ui/runs/{run_id}/requests``: newest first, filtered, a page at a time."""
        run_id = request.match_info["run_id"]
        log = self._log(run_id)
        q = request.query
        where = LogFilter(
            served=tuple(v for v in q.getall("served", []) if v),
            status=tuple(v for v in q.getall("status", []) if v),
            model=tuple(v for v in q.getall("model", []) if v),
            task=tuple(v for v in q.getall("task", []) if v),
            grep=q.get("q") or None,
        )
        try:
            cursor = Cursor.decode(q["cursor"]) if q.get("cursor") else None
        except ValueError as exc:
            raise bad_request("that is not a page of this log", "invalid_cursor") from exc

        def read() -> tuple[list[dict[str, Any]], Cursor | None]:
            entries, after = log.page(where, cursor, PAGE_SIZE)
            return [summary(e, log) for e in entries], after

        rows, after = await asyncio.to_thread(read)
        kept = [(k, v) for k, v in q.items() if k != "cursor" and v]
        body = [
            f'<div class="meta"><a href="/ui">← all runs</a> · '
            f'<a href="{_run_url(run_id)}">run page</a></div>',
            f'<h1>Requests of <span id="run-id">{escape(run_id)}</span></h1>',
            _filter_form(q),
            '<table id="requests"><thead><tr><th>time (UTC)</th><th>served</th><th>status</th><th>model</th>'
            "<th>task</th><th>ms</th><th>prompt</th><th>answer</th></tr></thead><tbody>",
        ]
        for row in rows:
            status = escape(str(row["status"])) + (
                f' <span class="err">{escape(row["error"])}</span>' if row["error"] else ""
            )
            body.append(
                f'<tr class="request" data-id="{escape(row["id"])}">'
                f'<td><a href="{_run_url(run_id, "/requests/" + quote(row["id"]))}">'
                f"{_when(row['ts'])}</a></td>"
                f'<td class="served-{escape(str(row["served"]))}">{escape(str(row["served"]))}</td>'
                f"<td>{status}</td>"
                f"<td>{escape(str(row['model']))}</td><td>{escape(str(row['task'] or '—'))}</td>"
                f'<td class="n">{escape(cell(row["latency_ms"]))}</td>'
                f'<td class="prompt">{escape(row["prompt"])}</td>'
                f'<td class="answer">{escape(row["answer"])}</td></tr>'
            )
        if not rows:
            body.append('<tr><td colspan="8">no request matches</td></tr>')
        body.append("</tbody></table>")
        if after is not None:
            link = "?" + urlencode([*kept, ("cursor", after.encode())])
            body.append(f'<p><a id="next" href="{escape(link)}">older →</a></p>')
        return _page(f"requests of {run_id}", "".join(body))

    async def request_page(self, request: web.Request) -> web.Response:
        """``GET /ui/runs/{run_id}/requests/{locator}``: one request, its answer, attempts and key."""
        run_id = request.match_info["run_id"]
        log = self._log(run_id)
        try:
            entry = await asyncio.to_thread(log.read, request.match_info["locator"])
        except LookupError as exc:
            raise GatewayError(404, str(exc), "invalid_request_error", "request_not_found") from exc
        record = entry.record
        response = await asyncio.to_thread(log.response, entry.shard, entry.offset, record)
        facts = [
            ("served", record.get("served")),
            ("status", record.get("status")),
            ("endpoint", record.get("endpoint")),
            ("model", record.get("model")),
            ("upstream model", record.get("upstream_model")),
            ("provider", record.get("provider")),
            ("task", record.get("task")),
            ("stream", record.get("stream")),
            ("sample", record.get("sample")),
            ("sample of", record.get("sample_of")),
            ("started (UTC)", _when(record.get("ts"))),
            ("latency ms", record.get("latency_ms")),
            ("TTFT ms", record.get("ttft_ms")),
            ("attempts", record.get("attempts")),
            ("usage", orjson.dumps(record.get("usage")).decode() if record.get("usage") else None),
            ("cost USD", record.get("cost_usd")),
            ("saved USD", record.get("cost_saved_usd")),
            ("key", record.get("key")),
        ]
        body = [
            f'<div class="meta"><a href="{_run_url(run_id, "/requests")}">'
            f"← requests of {escape(run_id)}</a></div>",
            f"<h1>Request {escape(str(record.get('key') or '')[:16])}</h1>",
            '<table id="facts">',
            *(
                f'<tr><th>{escape(k)}</th><td data-key="{escape(k)}">{escape(cell(v))}</td></tr>'
                for k, v in facts
            ),
            "</table>",
            f'<p><a id="explain" href="{_run_url(run_id, "/requests/" + quote(entry.locator) + "/explain")}">'
            "why did this miss? (nearest cached requests)</a></p>",
            '<h2>Answer</h2><div id="answer">',
            _answer(response),
            "</div>",
        ]
        if record.get("error"):
            body += ['<h2>Error</h2><div id="error" class="err">', _pre(record["error"]), "</div>"]
        attempts = record.get("failed_attempts") or []
        if attempts:
            body.append('<h2>Failed attempts</h2><table id="attempts"><tr><th>status</th><th>code</th>')
            body.append("<th>message</th><th>ms</th><th>body</th></tr>")
            for attempt in attempts:
                body.append(
                    "<tr>"
                    + "".join(
                        f"<td>{escape(cell(attempt.get(k)))}</td>"
                        for k in ("status", "code", "message", "ms")
                    )
                    + f"<td>{_pre(attempt['body']) if attempt.get('body') else '—'}</td></tr>"
                )
            body.append("</table>")
        req = record.get("request")
        body += [
            '<h2>Request as sent upstream</h2><div id="request">',
            _pre(req),
            "</div>",
            '<h2>Canonical fields (what the key is built from)</h2><div id="canonical">',
            _pre(canonical_fields(req) if isinstance(req, dict) else req),
            "</div>",
            "<h2>Response as stored</h2>",
            _pre(response),
        ]
        return _page(f"request {record.get('key')}", "".join(body))

    async def explain_page(self, request: web.Request) -> web.Response:
        """``GET .../requests/{locator}/explain``: the nearest stored requests and the fields that differ."""
        run_id = request.match_info["run_id"]
        log = self._log(run_id)
        try:
            entry = await asyncio.to_thread(log.read, request.match_info["locator"])
            found = await asyncio.to_thread(explain, self.cache_dir, run_id, str(entry.record.get("key")))
        except (LookupError, NoSuchRequest) as exc:
            raise GatewayError(404, str(exc), "invalid_request_error", "request_not_found") from exc
        back = _run_url(run_id, "/requests/" + quote(entry.locator))
        body = [f'<div class="meta"><a href="{back}">← the request</a></div><h1>Why did this miss?</h1>']
        if not found.neighbours:
            body.append("<p>No stored request of the same endpoint and model to compare with.</p>")
        for n in found.neighbours:
            body.append(
                f"<h2>{escape(n.key[:16])} (run {escape(n.run_id)}): "
                f"{len(n.differences)} field(s) differ</h2>"
                '<table class="differences"><tr><th>field</th><th>how</th><th>this request</th>'
                "<th>the cached one</th></tr>"
            )
            for d in n.differences:
                body.append(
                    f'<tr><td class="field">{escape(d.field)}</td><td>{escape(d.how)}'
                    f"{'<br>' + escape(d.detail) if d.detail else ''}</td>"
                    f"<td>{_pre(d.this)}</td><td>{_pre(d.cached)}</td></tr>"
                )
            body.append("</table>")
        return _page("why did this miss?", "".join(body))

    async def compare_page(self, request: web.Request) -> web.Response:
        """``GET /ui/compare?a=RUN&b=RUN``: requests in both, only in one, answers and totals side by side."""
        a, b = request.query.get("a", ""), request.query.get("b", "")
        match: Match = "request" if request.query.get("match") == "request" else "key"
        body = [
            '<div class="meta"><a href="/ui">← all runs</a></div><h1>Compare runs</h1>',
            '<form class="filters" method="get" action="/ui/compare">'
            f'<label>run A<input name="a" value="{escape(a)}"></label>'
            f'<label>run B<input name="b" value="{escape(b)}"></label>'
            '<label>match by<select name="match">'
            f'<option value="key"{" selected" if match == "key" else ""}>key</option>'
            f'<option value="request"{" selected" if match == "request" else ""}>request (any model)</option>'
            '</select></label><button type="submit">compare</button></form>',
        ]
        if a and b:
            for run_id in (a, b):
                self._log(run_id)  # 400 / 404 before reading
            result = await asyncio.to_thread(diff_runs, self.cache_dir, a, b, match)
            body.append(
                f'<p id="counts">in both: <b data-key="both">{result.both:,}</b> '
                f'(<span data-key="same">{result.same_answer:,}</span> same answer, '
                f'<span data-key="different">{result.different_answer:,}</span> different) · '
                f'only in {escape(a)}: <b data-key="only_a">{result.only_a:,}</b> · '
                f'only in {escape(b)}: <b data-key="only_b">{result.only_b:,}</b></p>'
            )
            body.append(f'<table id="totals"><tr><th>total</th><th>{escape(a)}</th><th>{escape(b)}</th></tr>')
            for name, va, vb in totals_rows(result):
                body.append(
                    f'<tr><td>{escape(name)}</td><td class="n">{escape(cell(va))}</td>'
                    f'<td class="n">{escape(cell(vb))}</td></tr>'
                )
            body.append("</table><h2>Different answers</h2>")
            for change in result.changed:
                body.append(
                    f'<div class="change"><div class="meta">prompt: {escape(change.prompt[:300])}</div>'
                    f'<div class="side"><div>{escape(a)} ({escape(str(change.model_a))})'
                    f"{_pre(change.answer_a)}"
                    f"</div><div>{escape(b)} ({escape(str(change.model_b))})"
                    f"{_pre(change.answer_b)}</div></div></div>"
                )
            if not result.changed:
                body.append("<p>none</p>")
            body.append(_flips_html(result.samples, a, b))
        return _page("compare runs", "".join(body))


def _flips_html(tasks: list[TaskFlips], a: str, b: str) -> str:
    """The scorer's per-sample metric differences: a row per task, filter and metric, and the doc ids."""
    if not tasks:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in FLIPS_HEADER)
    rows = "".join(
        "<tr>" + "".join(f'<td class="n">{escape(cell(v))}</td>' for v in row) + "</tr>"
        for row in flips_rows(tasks)
    )
    ids = "".join(
        f'<p class="meta">{escape(f"{m.task} {m.filter} {m.metric} {name}")}: '
        f"doc ids {escape(ids_text(found))}</p>"
        for t in tasks
        for m in t.metrics
        for name, found in (("up", m.up), ("down", m.down), ("other", m.other))
        if found
    )
    return (
        f"<h2>Per-sample metrics ({escape(a)} → {escape(b)}; up: {escape(b)}'s value is larger)</h2>"
        f'<table id="sample-flips"><tr>{head}</tr>{rows}</table>{ids}'
    )


def _filter_form(q: Any) -> str:
    def field(name: str, label: str) -> str:
        return f'<label>{label}<input name="{name}" value="{escape(q.get(name, ""))}"></label>'

    served = q.get("served", "")
    options = "".join(
        f'<option value="{v}"{" selected" if served == v else ""}>{v or "any"}</option>'
        for v in ("", *SERVED)
    )
    return (
        '<form class="filters" method="get">'
        + field("model", "model")
        + field("task", "task")
        + f'<label>served<select name="served">{options}</select></label>'
        + field("status", "status / error code")
        + field("q", "text in prompt or answer")
        + '<button type="submit">filter</button></form>'
    )


def _answer(response: Any) -> str:
    """An answer rendered for reading: chat as messages, completions as text, logprobs as tables."""
    if not isinstance(response, dict):
        return "<p>no answer</p>" if response is None else _pre(response)
    choices = response.get("choices")
    if not isinstance(choices, list):
        return _pre(response)
    out = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            text = content if isinstance(content, str) else orjson.dumps(content).decode() if content else ""
            out.append(
                f'<div class="msg"><div class="role">{escape(str(message.get("role", "assistant")))}'
                f" · finish: {escape(str(choice.get('finish_reason')))}</div>"
                f'<div class="text">{escape(text)}</div>'
            )
            for call in message.get("tool_calls") or []:
                function = call.get("function", {}) if isinstance(call, dict) else {}
                out.append(
                    f'<div class="tool-call">tool call <b>{escape(str(function.get("name")))}</b>'
                    f"{_pre(str(function.get('arguments')))}</div>"
                )
            out.append("</div>")
        elif "text" in choice:
            out.append(
                f'<div class="msg"><div class="role">completion · finish: '
                f"{escape(str(choice.get('finish_reason')))}"
                f'</div><div class="text">{escape(str(choice.get("text")))}</div></div>'
            )
        logprobs = choice.get("logprobs")
        if logprobs:
            out.append(_logprobs(logprobs))
    return "".join(out) or _pre(response)


def _logprobs(logprobs: Any) -> str:
    rows: list[tuple[Any, Any, Any]] = []
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):  # chat
        for item in logprobs["content"]:
            top = {t.get("token"): t.get("logprob") for t in item.get("top_logprobs") or []}
            rows.append((item.get("token"), item.get("logprob"), top))
    elif isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):  # completions
        tops = logprobs.get("top_logprobs") or []
        for i, token in enumerate(logprobs["tokens"]):
            values = logprobs.get("token_logprobs") or []
            rows.append((token, values[i] if i < len(values) else None, tops[i] if i < len(tops) else None))
    else:
        return _pre(logprobs)
    body = "".join(
        f"<tr><td>{escape(repr(t))}</td><td class='n'>{escape(cell(lp))}</td>"
        f"<td>{escape(orjson.dumps(top).decode()) if top else '—'}</td></tr>"
        for t, lp, top in rows
    )
    return f'<table class="logprobs"><tr><th>token</th><th>logprob</th><th>top</th></tr>{body}</table>'
