"""/metrics is derived from the records: after a mixed workload its counters equal a recount of the JSONL."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cache.records import read_records, shard_paths
from cache.runs import list_runs, run_dir
from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.standin import Fault, StandIn
from tests.upstreams import CountingRelay

PRICE = "{input_per_mtok: 1.5, output_per_mtok: 6}"
IN_PER_TOKEN, OUT_PER_TOKEN = 1.5e-6, 6e-6


def all_records(gateway: RunningGateway) -> list[dict]:
    out: list[dict] = []
    for run_id in list_runs(gateway.cache_dir):
        out += read_records(shard_paths(run_dir(gateway.cache_dir, run_id)))
    return out


async def scrape(gateway: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await gateway.session.get(gateway.url + "/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name`` over every sample whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


@pytest.fixture
async def mixed(relay: CountingRelay, standin: StandIn, make_gateway: GatewayFactory) -> RunningGateway:
    """The real vLLM (priced) and the fault-injecting stand-in behind one gateway."""
    yaml = model_yaml(relay.url + "/v1", cost=PRICE) + model_yaml(
        standin.api_base, name="standin", retries="{attempts: 2, initial_s: 0.01, max_s: 0.01}", cost=PRICE
    ).removeprefix("models:\n")
    return await make_gateway(yaml)


async def test_metrics_counters_equal_the_counts_in_the_run_records(
    mixed: RunningGateway, relay: CountingRelay, standin: StandIn
) -> None:
    chat = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Name a fruit."}],
        "max_tokens": 6,
        "temperature": 0,
    }
    for run in ("m-a", "m-b"):
        for prompt in ("One", "Two"):
            body = {"model": "smollm2", "prompt": f"{prompt} {run}", "max_tokens": 5, "temperature": 0}
            await mixed.post(f"/runs/{run}/v1/completions", body)  # miss
            await mixed.post(f"/runs/{run}/v1/completions", body)  # hit
    same = {"model": "smollm2", "prompt": "All at once:", "max_tokens": 6, "temperature": 0}
    together = await asyncio.gather(*(mixed.post("/runs/m-a/v1/completions", same) for _ in range(6)))
    assert "coalesced" in {r.headers["X-Cache"] for r in together}
    streamed = await mixed.post("/runs/m-b/v1/chat/completions", {**chat, "stream": True})
    assert streamed.headers["X-Cache"] == "miss"
    await mixed.post("/runs/m-b/v1/chat/completions", chat)  # a hit answered from the stream
    statuses = []
    for prompt, faults in (("retried", [500]), ("refused", [400]), ("exhausted", [503, 503]), ("fine", [])):
        standin.script = [Fault("status", status) for status in faults]
        response = await mixed.post(
            "/runs/m-a/v1/completions", {"model": "standin", "prompt": prompt, "temperature": 0}
        )
        statuses.append(response.status)
    assert statuses == [200, 400, 503, 200]

    records = all_records(mixed)
    samples = await scrape(mixed)
    served = Counter((r["model"], r["served"]) for r in records)
    assert served[("smollm2", "hit")] >= 5 and served[("smollm2", "coalesced")] >= 1
    for (model, how), n in served.items():
        assert total(samples, "replaygate_requests_metric_total", model=model, served=how) == n
    assert total(samples, "replaygate_requests_metric_total") == len(records)
    hits = sum(1 for r in records if r["served"] == "hit")
    misses = sum(1 for r in records if r["served"] == "miss")
    coalesced = sum(1 for r in records if r["served"] == "coalesced")
    assert total(samples, "replaygate_cache_hits_metric_total") == hits
    assert total(samples, "replaygate_cache_misses_metric_total") == misses
    assert total(samples, "replaygate_cache_coalesced_metric_total") == coalesced
    attempts = sum(r["attempts"] for r in records)
    assert total(samples, "replaygate_deployment_total_requests_total") == attempts
    assert attempts == relay.total + standin.calls.total()  # attempts are upstream calls (no batching here)
    retries = sum(max(0, r["attempts"] - 1) for r in records)
    assert total(samples, "replaygate_retries_metric_total") == retries == 2
    failed = Counter(f["code"] for r in records for f in r["failed_attempts"])
    for code, n in failed.items():
        assert total(samples, "replaygate_llm_api_failed_requests_metric_total", code=code) == n
    errors = Counter((r["error"]["code"], f"{r['status'] // 100}xx") for r in records if r["error"])
    assert sum(errors.values()) == 2
    for (code, status_class), n in errors.items():
        name = "replaygate_proxy_failed_requests_metric_total"
        assert total(samples, name, code=code, status_class=status_class) == n
    for kind, field in (("input", "prompt_tokens"), ("output", "completion_tokens")):
        for how in ("miss", "hit", "coalesced"):
            expected = sum((r["usage"] or {}).get(field, 0) for r in records if r["served"] == how)
            assert total(samples, f"replaygate_{kind}_tokens_metric_total", served=how) == expected
    spent = sum(r["cost_usd"] for r in records)
    assert total(samples, "replaygate_spend_metric_total") == pytest.approx(spent)
    assert total(samples, "replaygate_cost_saved_metric_total") == pytest.approx(
        sum(r["cost_saved_usd"] for r in records)
    )
    assert total(samples, "replaygate_request_total_latency_metric_count") == len(records)
    paid_ok = sum(1 for r in records if r["served"] == "miss" and r["status"] == 200)
    assert total(samples, "replaygate_llm_api_latency_metric_count") == paid_ok
    assert total(samples, "replaygate_time_to_first_token_seconds_count") == 1
    assert total(samples, "replaygate_num_requests_waiting") == 0
    assert total(samples, "replaygate_num_requests_running") == 0
    assert total(samples, "replaygate_concurrency_limit", model="smollm2") == 64


async def test_cost_is_tokens_times_the_configured_price(mixed: RunningGateway) -> None:
    body = {"model": "smollm2", "prompt": "Cost me:", "max_tokens": 7, "temperature": 0}
    await mixed.post("/runs/cost/v1/completions", body)
    await mixed.post("/runs/cost/v1/completions", body)
    miss, hit = list(read_records(shard_paths(run_dir(mixed.cache_dir, "cost"))))
    usage = miss["usage"]
    expected = usage["prompt_tokens"] * IN_PER_TOKEN + usage["completion_tokens"] * OUT_PER_TOKEN
    assert expected > 0
    assert miss["served"] == "miss" and miss["cost_usd"] == pytest.approx(expected)
    assert miss["cost_saved_usd"] == 0
    assert hit["served"] == "hit" and hit["cost_usd"] == 0
    assert hit["cost_saved_usd"] == pytest.approx(expected)


async def test_a_local_model_without_a_price_costs_nothing(gateway: RunningGateway) -> None:
    body = {"model": "smollm2", "prompt": "Free:", "max_tokens": 3, "temperature": 0}
    await gateway.post("/v1/completions", body)
    (record,) = read_records(shard_paths(run_dir(gateway.cache_dir, "default")))
    assert record["usage"]["completion_tokens"] > 0
    assert record["cost_usd"] == 0 and record["cost_saved_usd"] == 0


async def test_usage_an_upstream_omits_is_counted_and_marked(make_gateway: GatewayFactory) -> None:
    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        choices = [{"index": 0, "text": " four words of text"}]
        answer = {"id": "x", "object": "text_completion", "choices": choices}
        assert body["prompt"]
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        gateway = await make_gateway(model_yaml(f"http://127.0.0.1:{port}/v1", name="plain", cost=PRICE))
        body = {"model": "plain", "prompt": "a prompt of some length", "temperature": 0}
        response = await gateway.post("/v1/completions", body)
        assert response.status == 200
    finally:
        await runner.cleanup()
    (record,) = read_records(shard_paths(run_dir(gateway.cache_dir, "default")))
    assert record["usage_counted"] is True
    usage = record["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert record["cost_usd"] == pytest.approx(
        usage["prompt_tokens"] * IN_PER_TOKEN + usage["completion_tokens"] * OUT_PER_TOKEN
    )
