"""The /ui request log, request view, error links and run comparison, in headless Chromium.

A run with real misses and hits from the gateway, plus records (in a shard of
their own, as another gateway process would write) for what the real model
will not produce on demand: an answer holding markup, a failure with its
attempts, and a streamed chat tool call with logprobs.
"""

from __future__ import annotations

import asyncio
import html
import json
import re

import orjson
from click.testing import CliRunner

from gateway.cli import main
from tests.browser import dump_dom, need_chromium, screenshot
from tests.conftest import RunningGateway

RUN, OTHER = "ui-run", "ui-other"
EVIL = "<script>document.body.setAttribute('data-pwned','1')</script><img src=x onerror=\"alert(1)\">"


def body(prompt: str) -> dict:
    return {"model": "smollm2", "prompt": prompt, "max_tokens": 4, "temperature": 0}


def extra_records(ts: float) -> list[dict]:
    base = {"schema": 1, "run_id": RUN, "endpoint": "/v1/completions", "model": "smollm2", "stream": False}
    return [
        {
            **base,
            "key": "e" * 64,
            "ts": ts,
            "ts_end": ts + 0.2,
            "latency_ms": 200.0,
            "served": "miss",
            "status": 200,
            "request": {"model": "smollm2", "prompt": "Say something nasty"},
            "response": {"choices": [{"index": 0, "text": EVIL, "finish_reason": "stop"}]},
            "usage": {"prompt_tokens": 4, "completion_tokens": 9},
            "error": None,
            "failed_attempts": [],
        },
        {
            **base,
            "key": "f" * 64,
            "ts": ts + 1,
            "ts_end": ts + 1.5,
            "latency_ms": 500.0,
            "served": "miss",
            "status": 503,
            "request": {"model": "smollm2", "prompt": "Will fail"},
            "response": None,
            "usage": None,
            "attempts": 2,
            "error": {"message": "busy", "type": "upstream_error", "code": "upstream_error"},
            "failed_attempts": [
                {"status": 503, "code": "upstream_error", "message": "busy", "ms": 3.0, "body": "<b>busy</b>"}
            ],
        },
        {
            **base,
            "endpoint": "/v1/chat/completions",
            "key": "d" * 64,
            "ts": ts + 2,
            "ts_end": ts + 2.3,
            "latency_ms": 300.0,
            "ttft_ms": 40.0,
            "stream": True,
            "served": "miss",
            "status": 200,
            "request": {"model": "smollm2", "messages": [{"role": "user", "content": "Weather in Paris?"}]},
            "response": {
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "tool_calls",
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": "c1",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                                }
                            ],
                        },
                        "logprobs": {"content": [{"token": "get", "logprob": -0.25, "top_logprobs": []}]},
                    }
                ]
            },
            "usage": {"prompt_tokens": 8, "completion_tokens": 6},
            "error": None,
            "failed_attempts": [],
        },
    ]


async def fill(gateway: RunningGateway) -> None:
    for prompt in ("Red is a", "Blue is a", "Red is a", "Red is a"):
        await gateway.post(f"/runs/{RUN}/v1/completions", body(prompt))
    for prompt in ("Red is a", "Green is a"):
        await gateway.post(f"/runs/{OTHER}/v1/completions", body(prompt))
    folder = gateway.cache_dir / "runs" / RUN
    newest = max(
        json.loads(line)["ts_end"] for p in folder.glob("*.jsonl") for line in p.read_text().splitlines()
    )
    (folder / "9999999999999-other-1.jsonl").write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in extra_records(newest + 1))
    )


def rows(dom: str) -> list[tuple[str, str]]:
    """(id, served) of each row of the log table."""
    return re.findall(
        r'<tr class="request" data-id="([^"]+)">.*?<td class="served-[^"]*">([^<]+)</td>', dom, re.S
    )


def row_html(dom: str, row_id: str) -> str:
    """The HTML of the log table's row ``row_id`` (by its whole data-id: "1:10" is inside "1:1024")."""
    return dom.split(f'data-id="{row_id}"', 1)[1].split("</tr>", 1)[0]


def cli_log(gateway: RunningGateway, *args: str) -> list[dict]:
    argv = ["log", RUN, *args, "--format", "jsonl", "--cache-dir", str(gateway.cache_dir)]
    return [json.loads(line) for line in CliRunner().invoke(main, argv).output.splitlines()]


async def dom_of(gateway: RunningGateway, path: str) -> str:
    return await asyncio.to_thread(dump_dom, gateway.url + path)


async def test_request_log_filters_views_and_compare_in_chromium(gateway: RunningGateway) -> None:
    need_chromium()
    await fill(gateway)
    everything = cli_log(gateway)
    assert len(everything) == 7

    page = await dom_of(gateway, f"/ui/runs/{RUN}/requests")
    shown = rows(page)
    assert [served for _, served in shown] == [r["served"] for r in everything]  # newest first, as the CLI
    assert "get_weather" in page  # the tool call's answer previewed
    await asyncio.to_thread(screenshot, f"{gateway.url}/ui/runs/{RUN}/requests", "request-log")

    hits = rows(await dom_of(gateway, f"/ui/runs/{RUN}/requests?served=hit"))
    assert len(hits) == len(cli_log(gateway, "--served", "hit")) == 2 and {s for _, s in hits} == {"hit"}
    found = rows(await dom_of(gateway, f"/ui/runs/{RUN}/requests?q=blue"))
    assert len(found) == 1 and found[0][1] == "miss"

    evil_id = next(i for i, _ in shown if i.startswith("1:") and "nasty" in row_html(page, i))
    view = await dom_of(gateway, f"/ui/runs/{RUN}/requests/{evil_id}")
    assert html.escape(EVIL, quote=False) in view  # the answer is text on the page
    assert "data-pwned" not in view.split("<body")[1].split(">")[0] and "<img" not in view
    await asyncio.to_thread(
        screenshot, f"{gateway.url}/ui/runs/{RUN}/requests/{evil_id}", "request-view-markup"
    )

    tool_id = next(i for i, _ in shown if "get_weather" in row_html(page, i))
    view = await dom_of(gateway, f"/ui/runs/{RUN}/requests/{tool_id}")
    assert "tool call <b>get_weather</b>" in view and 'class="logprobs"' in view and "-0.25" in view
    assert re.search(r'data-key="TTFT ms">40<', view) and "Weather in Paris?" in view
    await asyncio.to_thread(
        screenshot, f"{gateway.url}/ui/runs/{RUN}/requests/{tool_id}", "request-view-tool-call"
    )

    run_page = await dom_of(gateway, f"/ui/runs/{RUN}")
    (link,) = re.findall(r'<a class="error-link" href="([^"]+)">upstream_error: 1</a>', run_page)
    failed = await dom_of(gateway, html.unescape(link))
    (row,) = rows(failed)
    view = await dom_of(gateway, f"/ui/runs/{RUN}/requests/{row[0]}")
    assert 'id="attempts"' in view and "&lt;b&gt;busy&lt;/b&gt;" in view

    compare = await dom_of(gateway, f"/ui/compare?a={RUN}&b={OTHER}")
    counts = dict(re.findall(r'data-key="(\w+)">([\d,]+)<', compare))
    assert counts == {
        "both": "1",
        "same": "1",
        "different": "0",
        "only_a": "4",
        "only_b": "1",
    }  # a: red, blue, 3 extra
    await asyncio.to_thread(screenshot, f"{gateway.url}/ui/compare?a={RUN}&b={OTHER}", "compare-runs")


async def test_pages_forbid_scripts_and_reject_bad_locators(gateway: RunningGateway) -> None:
    await fill(gateway)
    response = await gateway.session.get(f"{gateway.url}/ui/runs/{RUN}/requests")
    assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none' covers it
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    for locator in ("0:1", "7:0", "nope"):
        response = await gateway.session.get(f"{gateway.url}/ui/runs/{RUN}/requests/{locator}")
        assert response.status == 404, locator
