"""The gateway against the real local vLLM: misses, hits, single-flight, streaming, runs."""

from __future__ import annotations

import asyncio

import orjson

from tests.conftest import RunningGateway
from tests.upstreams import CountingRelay

CHAT = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 8,
    "temperature": 0,
}
COMPLETION = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}


async def test_repeated_request_is_a_hit_with_one_upstream_call(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    first = await gateway.post("/v1/chat/completions", CHAT)
    second = await gateway.post("/v1/chat/completions", CHAT)
    assert first.status == second.status == 200
    assert first.headers["X-Cache"] == "miss"
    assert second.headers["X-Cache"] == "hit"
    assert first.headers["X-Record-Key"] == second.headers["X-Record-Key"]
    assert relay.calls["/v1/chat/completions"] == 1


async def test_cache_hit_returns_exactly_the_body_of_its_miss(gateway: RunningGateway) -> None:
    miss = await gateway.post("/v1/completions", COMPLETION)
    hit = await gateway.post("/v1/completions", COMPLETION)
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("miss", "hit")
    assert await miss.read() == await hit.read()
    assert orjson.loads(await hit.read())["choices"][0]["text"]


async def test_fifty_identical_requests_in_flight_share_one_upstream_call(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    body = {**COMPLETION, "prompt": "Fifty clients ask at once:"}
    responses = await asyncio.gather(*(gateway.post("/v1/completions", body) for _ in range(50)))
    bodies = {await r.read() for r in responses}
    served = sorted(r.headers["X-Cache"] for r in responses)
    assert relay.calls["/v1/completions"] == 1
    assert len(bodies) == 1
    assert served.count("miss") == 1 and set(served) <= {"miss", "coalesced", "hit"}
    assert served.count("coalesced") >= 1


async def test_streamed_miss_then_streamed_hit_carry_the_same_text(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    body = {**COMPLETION, "prompt": "Once upon a time", "stream": True}
    miss = await gateway.post("/v1/completions", body)
    hit = await gateway.post("/v1/completions", body)
    plain = await gateway.post("/v1/completions", {**body, "stream": False})
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("miss", "hit")
    assert miss.headers["Content-Type"].startswith("text/event-stream")
    assert relay.calls["/v1/completions"] == 1

    def text_of(stream: bytes) -> str:
        events = [e[len(b"data: ") :] for e in stream.split(b"\n\n") if e.startswith(b"data: ")]
        assert events[-1] == b"[DONE]"
        return "".join(
            orjson.loads(e)["choices"][0]["text"] for e in events[:-1] if orjson.loads(e)["choices"]
        )

    streamed = text_of(await miss.read())
    assert streamed and streamed == text_of(await hit.read())
    assert orjson.loads(await plain.read())["choices"][0]["text"] == streamed


async def test_streamed_chat_is_assembled_into_one_record(gateway: RunningGateway) -> None:
    response = await gateway.post("/runs/chat-stream/v1/chat/completions", {**CHAT, "stream": True})
    assert response.status == 200
    (record,) = gateway.records("chat-stream")
    assert record["served"] == "miss" and record["stream"] is True
    assert record["response"]["object"] == "chat.completion"
    assert record["response"]["choices"][0]["message"]["content"]
    assert record["usage"]["completion_tokens"] > 0


async def test_every_request_and_response_lands_in_its_runs_jsonl(
    gateway: RunningGateway,
) -> None:
    await gateway.post("/runs/my-run/v1/completions", COMPLETION)
    await gateway.post("/runs/my-run/v1/completions", COMPLETION)
    await gateway.post("/v1/completions", COMPLETION, headers={"X-Run-Id": "by-header"})
    records = gateway.records("my-run")
    assert [r["served"] for r in records] == ["miss", "hit"]
    assert records[0]["response"] == records[1]["response"]
    assert records[0]["request"]["prompt"] == COMPLETION["prompt"]
    assert records[0]["usage"]["prompt_tokens"] > 0
    assert [r["served"] for r in gateway.records("by-header")] == ["hit"]


async def test_cache_control_no_cache_refreshes_and_no_store_bypasses(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    body = {**COMPLETION, "prompt": "Refresh me"}
    await gateway.post("/v1/completions", body)
    refreshed = await gateway.post("/v1/completions", body, headers={"Cache-Control": "no-cache"})
    bypassed = await gateway.post("/v1/completions", body, headers={"Cache-Control": "no-store"})
    again = await gateway.post("/v1/completions", body)
    assert [refreshed.headers["X-Cache"], bypassed.headers["X-Cache"]] == ["miss", "miss"]
    assert again.headers["X-Cache"] == "hit"
    assert relay.calls["/v1/completions"] == 3


async def test_a_salt_draws_a_separate_entry(gateway: RunningGateway, relay: CountingRelay) -> None:
    body = {**COMPLETION, "temperature": 1.0, "prompt": "Roll a die:"}
    a = await gateway.post("/v1/completions", body, headers={"X-Cache-Salt": "a"})
    b = await gateway.post("/v1/completions", body, headers={"X-Cache-Salt": "b"})
    # Another run replays salt a's first sample (in the same run it would be a second draw).
    a_again = await gateway.post("/runs/replay/v1/completions", body, headers={"X-Cache-Salt": "a"})
    assert a.headers["X-Record-Key"] != b.headers["X-Record-Key"]
    assert [a.headers["X-Cache"], b.headers["X-Cache"], a_again.headers["X-Cache"]] == ["miss", "miss", "hit"]
    assert relay.calls["/v1/completions"] == 2


async def test_tokenizer_endpoints_answer_at_run_roots_and_are_cached(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    for _ in range(2):
        info = await gateway.session.get(gateway.url + "/runs/tok/tokenizer_info")
        assert info.status == 200 and (await info.json())["eos_token"]
        tokens = await gateway.post(
            "/runs/tok/tokenize", {"prompt": "hello world", "add_special_tokens": False}
        )
        ids = (await tokens.json())["tokens"]
        text = await gateway.post("/runs/tok/detokenize", {"tokens": ids})
        assert (await text.json())["prompt"] == "hello world"
    assert relay.calls == {"/tokenizer_info": 1, "/tokenize": 1, "/detokenize": 1}


async def test_models_lists_the_configured_names(gateway: RunningGateway) -> None:
    response = await gateway.session.get(gateway.url + "/runs/x/v1/models")
    assert [m["id"] for m in (await response.json())["data"]] == ["smollm2"]
    health = await gateway.session.get(gateway.url + "/healthz")
    assert health.status == 200
