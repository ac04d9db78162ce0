"""The batch lane: only what the cache lacks goes upstream, once; its results become hits; nothing is lost.

Driven by the openai SDK against a stand-in batch provider (tests/batch_standin.py)
whose clock the test moves, and against the real local vLLM through the local engine.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from gateway.app import create_app
from gateway.batches.journal import Journal
from gateway.config import parse_config
from gateway.report.aggregate import build_report
from tests.batch_standin import BatchStandIn
from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.processes import until

PRICE = "{input_per_mtok: 1.0, output_per_mtok: 2.0}"
ONLINE_COST = 3 * 1e-6 + 4 * 2e-6  # the stand-in's usage: 3 prompt and 4 completion tokens


@pytest.fixture
async def provider() -> AsyncIterator[BatchStandIn]:
    server = BatchStandIn()
    await server.start()
    yield server
    await server.stop()


LITELLM_MODEL = "stand-in-batch"  # what litellm's lines must name: upstream_model less its provider


@pytest.fixture(params=["openai-compatible", "litellm"])
def via(request: pytest.FixtureRequest) -> str:
    """The provider the model is configured with: the batch API is reached directly, or through litellm's
    batch functions (litellm taking the stand-in for OpenAI)."""
    return str(request.param)


def upstream_yaml(provider: BatchStandIn, via: str = "openai-compatible", **batch: Any) -> str:
    settings = {"engine": "upstream", "poll_interval_s": 3600, **batch}  # the test polls, by retrieving
    flow = "{" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "}"
    text = model_yaml(provider.api_base, cost=PRICE, batch=flow)
    if via == "litellm":
        text = text.replace("provider: openai-compatible", "provider: litellm")
        text += f"    upstream_model: openai/{LITELLM_MODEL}\n"
    return text


def line_models(provider: BatchStandIn) -> set[str]:
    """The model every line the stand-in was sent names."""
    return {
        orjson.loads(line)["body"]["model"]
        for batch in provider.batches.values()
        for line in provider.files[batch.input_file_id].splitlines()
    }


def chat(prompt: str) -> dict[str, Any]:
    return {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "temperature": 0}


def jsonl(lines: list[tuple[str, dict[str, Any]]], url: str = "/v1/chat/completions") -> bytes:
    return b"".join(
        orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}) + b"\n"
        for cid, body in lines
    )


def client(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


async def submit(openai: AsyncOpenAI, lines: list[tuple[str, dict[str, Any]]], **headers: str) -> Any:
    uploaded = await openai.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return await openai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=headers or None,
    )


async def lines_of(openai: AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await openai.files.content(file_id)
    return [orjson.loads(line) for line in content.content.splitlines()]


def records(cache_dir: Path, run_id: str = "default") -> list[dict[str, Any]]:
    return list(read_records(shard_paths(run_dir(cache_dir, run_id))))


async def test_a_batch_sends_only_distinct_misses_upstream_and_its_results_become_hits(
    provider: BatchStandIn, via: str, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider, via))
    prompts = [f"question {i}" for i in range(170)]
    for prompt in prompts[:50]:  # 50 already cached
        assert (await gateway.post("/v1/chat/completions", chat(prompt))).status == 200
    bodies = [chat(p) for p in prompts] + [chat(p) for p in prompts[50:80]]  # 30 lines repeat a miss
    random.Random(15).shuffle(bodies)
    lines = [(f"req-{i}", body) for i, body in enumerate(bodies)]
    openai = client(gateway.url)

    batch = await submit(openai, lines)
    assert batch.status == "in_progress"
    assert provider.lines_received == 120  # 200 - 50 cached - 30 repeated
    assert line_models(provider) == {LITELLM_MODEL if via == "litellm" else "smollm2"}
    provider.advance(50)
    assert (await openai.batches.retrieve(batch.id)).status == "in_progress"
    provider.advance(100)
    done = await openai.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 200
    output = await lines_of(openai, done.output_file_id)
    assert [line["custom_id"] for line in output] == [cid for cid, _ in lines]
    for line, (_, body) in zip(output, lines, strict=True):
        assert line["response"]["body"]["choices"][0]["message"]["content"].endswith(
            body["messages"][0]["content"]
        )
    assert done.error_file_id is None

    seeded = provider.online_calls
    for prompt in prompts:
        response = await gateway.post("/v1/chat/completions", chat(prompt))
        assert response.headers["X-Cache"] == "hit"
    assert provider.online_calls == seeded == 50

    batch_records = [r for r in records(gateway.cache_dir) if r["served"] == "batch"]
    assert len(batch_records) == 120
    assert [r["cost_usd"] for r in batch_records] == pytest.approx([ONLINE_COST / 2] * 120)
    served = [r["served"] for r in records(gateway.cache_dir)]
    assert served.count("coalesced") == 30
    total = build_report(gateway.cache_dir, "default").as_dict()["total"]
    assert total["cost_batch_usd"] == pytest.approx(120 * ONLINE_COST / 2)
    assert total["cost_online_usd"] == pytest.approx(50 * ONLINE_COST)


async def test_a_batch_whose_lines_are_all_cached_completes_at_once(
    provider: BatchStandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider))
    for prompt in ("a", "b"):
        await gateway.post("/v1/chat/completions", chat(prompt))
    openai = client(gateway.url)
    batch = await submit(openai, [("x", chat("b")), ("y", chat("a")), ("z", chat("b"))])
    assert batch.status == "completed"
    assert provider.batches == {}
    output = await lines_of(openai, batch.output_file_id)
    assert [line["custom_id"] for line in output] == ["x", "y", "z"]


async def test_a_batch_labelled_with_x_task_records_every_line_under_it_unless_the_line_names_its_own(
    provider: BatchStandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider))
    await gateway.post("/v1/chat/completions", chat("cached"))
    own = {**chat("own label"), "metadata": {"task": "other"}}
    lines = [("hit", chat("cached")), ("miss", chat("fresh")), ("own", own)]
    batch = await submit(client(gateway.url), lines, **{"X-Task": "qa/judge"})
    provider.advance(provider.validate_s + provider.run_s)
    assert (await client(gateway.url).batches.retrieve(batch.id)).status == "completed"

    labelled = {
        r["served"] + ":" + str(r["task"]) for r in records(gateway.cache_dir) if r["served"] != "miss"
    }
    assert labelled == {"hit:qa/judge", "batch:qa/judge", "batch:other"}
    groups = build_report(gateway.cache_dir, "default", "task").as_dict()["groups"]
    assert {g["name"]: g["requests"] for g in groups}["qa/judge"] == 2


async def test_misses_are_split_by_the_providers_line_and_byte_limits(
    provider: BatchStandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider, max_lines=7))
    openai = client(gateway.url)
    batch = await submit(openai, [(f"r{i}", chat(f"q{i}")) for i in range(20)])
    assert sorted(len(provider.files[b.input_file_id].splitlines()) for b in provider.batches.values()) == [
        6,
        7,
        7,
    ]
    provider.advance(1000)
    done = await openai.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert [line["custom_id"] for line in await lines_of(openai, done.output_file_id)] == [
        f"r{i}" for i in range(20)
    ]

    small = await make_gateway(
        upstream_yaml(provider, max_bytes=1024), cache_dir=gateway.cache_dir.parent / "b"
    )
    before = len(provider.batches)
    await submit(client(small.url), [(f"r{i}", chat(f"other question {i}")) for i in range(20)])
    sizes = [len(provider.files[b.input_file_id]) for b in list(provider.batches.values())[before:]]
    assert len(sizes) > 1 and max(sizes) <= 1024


async def test_failed_and_expired_lines_are_reported_never_cached_and_can_be_resubmitted(
    provider: BatchStandIn, via: str, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider, via))
    openai = client(gateway.url)
    provider.outcome = "expired"
    fates = {"late": "unfinished", "bad": "failed"}
    provider.line_fate = lambda body: fates.get(body["messages"][0]["content"].split()[0], "ok")
    lines = [
        ("1", chat("fine one")),
        ("2", chat("late one")),
        ("3", chat("bad one")),
        ("4", chat("late one")),
    ]
    batch = await submit(openai, lines)
    provider.advance(1000)
    done = await openai.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert [line["custom_id"] for line in await lines_of(openai, done.output_file_id)] == ["1"]
    errors = {line["custom_id"]: line["error"]["code"] for line in await lines_of(openai, done.error_file_id)}
    assert errors == {"2": "batch_expired", "3": "upstream_500", "4": "batch_expired"}

    online = provider.online_calls
    miss = await gateway.post("/v1/chat/completions", chat("bad one"))
    assert miss.headers["X-Cache"] == "miss" and provider.online_calls == online + 1  # never cached

    provider.outcome, provider.line_fate = "completed", lambda body: "ok"
    received = provider.lines_received
    again = await submit(openai, [("2", chat("late one")), ("3", chat("bad one"))])
    assert provider.lines_received == received + 1  # "bad one" was answered online meanwhile
    provider.advance(1000)
    redone = await openai.batches.retrieve(again.id)
    assert [line["custom_id"] for line in await lines_of(openai, redone.output_file_id)] == ["2", "3"]
    assert redone.error_file_id is None


async def test_a_batch_the_provider_fails_puts_every_line_in_the_error_file(
    provider: BatchStandIn, via: str, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider, via))
    openai = client(gateway.url)
    provider.outcome = "failed"
    batch = await submit(openai, [("a", chat("one")), ("b", chat("two"))])
    provider.advance(1000)
    done = await openai.batches.retrieve(batch.id)
    assert done.output_file_id is None
    codes = [line["error"]["code"] for line in await lines_of(openai, done.error_file_id)]
    assert codes == ["batch_failed", "batch_failed"]


async def test_a_cancelled_batch_reports_its_unanswered_lines_as_cancelled(
    provider: BatchStandIn, via: str, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider, via))
    await gateway.post("/v1/chat/completions", chat("cached"))
    openai = client(gateway.url)
    batch = await submit(openai, [("a", chat("cached")), ("b", chat("pending"))])
    cancelled = await openai.batches.cancel(batch.id)
    assert cancelled.status == "cancelled"
    assert [line["custom_id"] for line in await lines_of(openai, cancelled.output_file_id)] == ["a"]
    codes = [line["error"]["code"] for line in await lines_of(openai, cancelled.error_file_id)]
    assert codes == ["batch_cancelled"]


async def _serve(yaml_text: str, cache_dir: Path) -> TestServer:
    config = parse_config(yaml_text + "shutdown_timeout_s: 1\n", "test config", cache_dir=str(cache_dir))
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    return server


async def test_a_gateway_restarted_while_a_batch_is_pending_loses_nothing_and_submits_nothing_twice(
    provider: BatchStandIn, via: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = await _serve(upstream_yaml(provider, via, poll_interval_s=0.05), store)
    batch = await submit(
        client(str(first.make_url("")).rstrip("/")), [(f"r{i}", chat(f"q{i}")) for i in range(10)]
    )
    assert len(provider.batches) == 1
    await first.close()

    provider.advance(1000)
    second = await _serve(upstream_yaml(provider, via, poll_interval_s=0.05), store)
    try:
        # The restarted gateway's own poller finishes the batch: nobody asks for it.
        await until(lambda: _finished(store, batch.id), 10, "the resumed batch to complete")
        openai = client(str(second.make_url("")).rstrip("/"))
        done = await openai.batches.retrieve(batch.id)
        assert done.status == "completed"
        assert len(await lines_of(openai, done.output_file_id)) == 10
        assert len(provider.batches) == 1 and provider.lines_received == 10
        assert sum(r["served"] == "batch" for r in records(store)) == 10
    finally:
        await second.close()


async def _finished(store: Path, batch_id: str) -> bool:
    job = Journal(store).load(batch_id)
    return job is not None and job.finished


async def test_a_submit_the_journal_never_recorded_is_found_upstream_not_repeated(
    provider: BatchStandIn, via: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = await _serve(upstream_yaml(provider, via), store)
    batch = await submit(client(str(first.make_url("")).rstrip("/")), [("a", chat("x")), ("b", chat("y"))])
    await first.close()
    journal = Journal(store)
    job = journal.load(batch.id)
    assert job is not None
    job.chunks[0].upstream_batch_id = None  # as if killed after the provider accepted, before the save
    journal.save(job)

    provider.advance(1000)
    gateway = await make_gateway(upstream_yaml(provider, via), cache_dir=store)
    done = await client(gateway.url).batches.retrieve(batch.id)
    assert done.status == "completed"
    assert len(provider.batches) == 1 and provider.lines_received == 2


async def test_bad_batch_input_is_refused_naming_the_line(
    provider: BatchStandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider))
    openai = client(gateway.url)
    uploaded = await openai.files.create(
        file=("in.jsonl", jsonl([("a", chat("x"))]) + b'{"custom_id": "b", "url": "/v1/chat/completions"}\n'),
        purpose="batch",
    )
    response = await gateway.post(
        "/v1/batches", {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions"}
    )
    assert response.status == 400
    assert "line 2" in (await response.json())["error"]["message"]
    assert provider.batches == {}


async def test_embeddings_batches_are_refused_naming_the_line_and_the_online_route(
    provider: BatchStandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(upstream_yaml(provider))
    openai = client(gateway.url)
    embed = {"model": "smollm2", "input": ["a", "b"]}
    only = await openai.files.create(
        file=("e.jsonl", jsonl([("e1", embed)], "/v1/embeddings")), purpose="batch"
    )
    response = await gateway.post("/v1/batches", {"input_file_id": only.id, "endpoint": "/v1/embeddings"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "unsupported_batch_endpoint" and "/v1/embeddings online" in error["message"]

    mixed = jsonl([("c1", chat("x"))]) + jsonl([("e1", embed)], "/v1/embeddings")
    uploaded = await openai.files.create(file=("m.jsonl", mixed), purpose="batch")
    response = await gateway.post(
        "/v1/batches", {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions"}
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "unsupported_batch_endpoint"
    assert error["message"].startswith(
        "batch input line 2 ('e1'): the batch lane does not answer /v1/embeddings"
    )
    assert provider.batches == {} and provider.online_calls == 0


async def test_batches_belong_to_their_run(provider: BatchStandIn, make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(upstream_yaml(provider))
    mine = client(gateway.url + "/runs/mine")
    batch = await submit(mine, [("a", chat("x"))])
    assert [b.id async for b in mine.batches.list()] == [batch.id]
    assert [b.id async for b in client(gateway.url + "/runs/other").batches.list()] == []
    response = await gateway.session.get(f"{gateway.url}/runs/other/v1/batches/{batch.id}")
    assert response.status == 404


async def test_the_local_engine_answers_a_batch_from_the_real_model(
    gateway: RunningGateway, relay: Any
) -> None:
    def completion(prompt: str) -> dict[str, Any]:
        return {"model": "smollm2", "prompt": prompt, "max_tokens": 4, "temperature": 0}

    await gateway.post("/v1/completions", completion("The capital of France is"))
    calls = relay.total
    openai = client(gateway.url)
    prompts = ["The capital of France is", "One, two,", "Hello, my name is", "One, two,"]
    lines = [(f"c{i}", completion(p)) for i, p in enumerate(prompts)]
    uploaded = await openai.files.create(file=("in.jsonl", jsonl(lines, "/v1/completions")), purpose="batch")
    batch = await openai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
    )

    async def completed() -> Any:
        found = await openai.batches.retrieve(batch.id)
        return found if found.status == "completed" else None

    done = await until(completed, 120, "the local batch to complete", every_s=0.2)
    output = await lines_of(openai, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["c0", "c1", "c2", "c3"]
    assert output[1]["response"]["body"] == output[3]["response"]["body"]
    assert relay.total - calls == 2  # the two distinct misses, each once
    for prompt in prompts:
        assert (await gateway.post("/v1/completions", completion(prompt))).headers["X-Cache"] == "hit"


def test_the_batch_price_is_half_the_online_one_unless_the_config_says_otherwise() -> None:
    from gateway.pricing import resolve_price

    def price(cost: str) -> Any:
        config = parse_config(model_yaml("http://127.0.0.1:9/v1", cost=cost), "test config")
        return resolve_price(config.models[0])

    half = price("{input_per_mtok: 2.0, output_per_mtok: 4.0}")
    assert half.of(1_000_000, 1_000_000) == 6.0
    assert half.of(1_000_000, 1_000_000, batch=True) == 3.0
    quarter = price("{input_per_mtok: 2.0, output_per_mtok: 4.0, batch_price_factor: 0.25}")
    assert quarter.of(1_000_000, 1_000_000, batch=True) == 1.5


def test_litellm_batches_go_to_providers_whose_batches_it_can_create_and_anthropic_to_the_local_engine() -> (
    None
):
    from gateway.batches.lane import engine_of

    def model(upstream: str) -> Any:
        text = model_yaml("https://api.example.com/v1", upstream_model=upstream).replace(
            "provider: openai-compatible", "provider: litellm"
        )
        return parse_config(text, "test config").models[0]

    openai_model = model("openai/gpt-4o-mini")
    client = openai_model.capabilities.batches(openai_model, None)
    assert client is not None and client.line_model == "gpt-4o-mini"
    assert engine_of(openai_model, client) == "upstream"
    # litellm reads Anthropic's Message Batches but cannot create one: its lines are answered online.
    claude = model("anthropic/claude-3-5-haiku-20241022")
    assert claude.capabilities.batches(claude, None) is None
    assert engine_of(claude, None) == "local"
