"""The /ui dashboard: runs and their live counters from the records, and the report, in headless Chromium."""

from __future__ import annotations

import asyncio
import re

import orjson
from click.testing import CliRunner

from gateway.cli import main
from tests.browser import dump_dom, need_chromium, screenshot
from tests.conftest import RunningGateway

RUN = "dash-run"


def body(prompt: str) -> dict:
    return {"model": "smollm2", "prompt": prompt, "max_tokens": 5, "temperature": 0}


async def fill(gateway: RunningGateway) -> None:
    for prompt in ("Red is a", "Blue is a", "Green is a"):
        await gateway.post(f"/runs/{RUN}/v1/completions", body(prompt))
    await gateway.post(f"/runs/{RUN}/v1/completions", body("Red is a"), headers={"X-Task": "colours"})
    await gateway.post("/runs/other-run/v1/completions", body("Grey is a"))


async def get_json(gateway: RunningGateway, path: str) -> tuple[int, dict]:
    response = await gateway.session.get(gateway.url + path)
    return response.status, orjson.loads(await response.read())


async def test_live_counters_equal_the_report_and_follow_new_requests(gateway: RunningGateway) -> None:
    await fill(gateway)
    status, live = await get_json(gateway, f"/ui/api/runs/{RUN}")
    assert status == 200
    args = ["report", RUN, "--format", "json", "--cache-dir", str(gateway.cache_dir)]
    result = CliRunner().invoke(main, args)
    total = orjson.loads(result.output)["total"]
    for field in ("requests", "served", "tokens_in", "tokens_out", "cost_usd", "errors", "hit_ratio"):
        assert live[field] == total[field], field
    assert live["served"]["miss"] == 3 and live["served"]["hit"] == 1
    await gateway.post(f"/runs/{RUN}/v1/completions", body("Yellow is a"))
    _, later = await get_json(gateway, f"/ui/api/runs/{RUN}")
    assert later["requests"] == live["requests"] + 1
    assert later["served"]["miss"] == live["served"]["miss"] + 1
    _, runs = await get_json(gateway, "/ui/api/runs")
    assert {r["run_id"]: r["requests"] for r in runs["runs"]} == {RUN: 5, "other-run": 1}


async def test_unknown_and_invalid_runs_get_clear_errors(gateway: RunningGateway) -> None:
    status, error = await get_json(gateway, "/ui/api/runs/nobody")
    assert status == 404 and error["error"]["code"] == "run_not_found"
    status, error = await get_json(gateway, "/ui/api/runs/bad%20id")
    assert status == 400 and error["error"]["code"] == "invalid_run_id"


async def test_the_dashboard_and_its_report_render_in_chromium(gateway: RunningGateway) -> None:
    need_chromium()
    await fill(gateway)
    _, live = await get_json(gateway, f"/ui/api/runs/{RUN}")

    index = await asyncio.to_thread(dump_dom, gateway.url + "/ui")
    rows = dict(re.findall(r'<tr data-run="([^"]+)">.*?<td class="requests">([\d,]+)</td>', index, re.S))
    assert rows == {RUN: str(live["requests"]), "other-run": "1"}
    await asyncio.to_thread(screenshot, gateway.url + "/ui", "dashboard-runs")

    page = await asyncio.to_thread(dump_dom, f"{gateway.url}/ui/runs/{RUN}")
    cards = dict(re.findall(r'data-key="([^"]+)"><div class="v">([^<]+)</div>', page))
    assert cards["requests"] == str(live["requests"])
    assert cards["misses"] == str(live["served"]["miss"]) and cards["hits"] == str(live["served"]["hit"])
    assert f'src="/ui/runs/{RUN}/report"' in page
    await asyncio.to_thread(screenshot, f"{gateway.url}/ui/runs/{RUN}", "dashboard-run")

    report = await asyncio.to_thread(dump_dom, f"{gateway.url}/ui/runs/{RUN}/report")
    for chart in ("chart-timeline", "chart-tokens", "chart-latency", "chart-cost", "chart-served"):
        assert f'id="{chart}"' in report
    assert report.count('<svg class="chart"') == 5
    assert '<span id="run-id">dash-run</span>' in report
