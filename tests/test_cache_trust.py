"""A hit is only ever a complete, valid answer from the deployment that was asked.

Each misbehaviour here is one a real upstream or proxy shows in the wild and a
real vLLM will not show on demand, so the stand-in plays it. Every case ends
the same way: no cache entry, a failed attempt in the record, the right client
error, and an upstream call again on the next identical request.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import AsyncOpenAI

from cache.index import rebuild_index
from cache.keys import deployment_namespace
from cache.records import RECORD_SCHEMA
from cache.runs import run_dir
from gateway.app import PIPELINE
from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.standin import Fault, StandIn, completion_body, stream_chunks

TEXT = {"model": "standin", "prompt": "hello", "max_tokens": 4, "temperature": 0}
CHAT = {
    "model": "standin",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
    "temperature": 0,
}
ERROR = {"error": {"message": "model overloaded", "type": "server_error", "code": 500}}


@pytest.fixture
async def trusting(standin: StandIn, make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway that tries twice, without waiting, in front of the stand-in."""
    return await make_gateway(
        model_yaml(standin.api_base, name="standin", retries="{attempts: 2, initial_s: 0, max_s: 0}")
    )


def entries(gateway: RunningGateway) -> int:
    """How many answers the gateway's index holds."""
    return len(gateway.app[PIPELINE].index)


def events_of(raw: bytes) -> list[Any]:
    """The JSON payloads of a server-sent-event body (``[DONE]`` as the string)."""
    payloads = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    return [p.decode() if p == b"[DONE]" else orjson.loads(p) for p in payloads]


async def assert_next_call_reaches_the_upstream(
    gateway: RunningGateway, standin: StandIn, path: str, body: dict[str, Any]
) -> None:
    before = standin.calls.total()
    again = await gateway.post(path, body)
    assert again.status == 200 and again.headers["X-Cache"] == "miss"
    assert standin.calls.total() == before + 1


NOT_ANSWERS = [
    pytest.param("/v1/completions", ERROR, id="error-with-200"),
    pytest.param("/v1/completions", {**completion_body("x"), "choices": []}, id="no-choices"),
    pytest.param("/v1/completions", None, id="null"),
    pytest.param("/v1/completions", [completion_body("x")], id="a-list"),
    pytest.param("/v1/completions", {**completion_body("x"), "choices": [{"index": 0}]}, id="no-text"),
    pytest.param("/v1/chat/completions", completion_body("x"), id="chat-without-message"),
    pytest.param(
        "/v1/chat/completions", {**completion_body("x", chat=True), "error": ERROR}, id="chat-error"
    ),
]


@pytest.mark.parametrize(("path", "bad"), NOT_ANSWERS)
async def test_a_200_that_is_not_an_answer_is_a_recorded_failure_and_never_cached(
    trusting: RunningGateway, standin: StandIn, path: str, bad: Any
) -> None:
    body = TEXT if path == "/v1/completions" else CHAT
    standin.script = [Fault("body", body=bad), Fault("body", body=bad)]
    response = await trusting.post(path, body)
    assert response.status == 502
    assert orjson.loads(await response.read())["error"]["code"] == "upstream_invalid_response"
    assert standin.calls.total() == 2  # retried like a 5xx: it may be transient
    assert entries(trusting) == 0
    (record,) = trusting.records()
    assert record["status"] == 502 and record["attempts"] == 2
    assert [f["code"] for f in record["failed_attempts"]] == ["upstream_invalid_response"] * 2
    assert orjson.loads(record["failed_attempts"][0]["body"]) == bad  # what it said, kept to look at
    streamed = await trusting.post(path, {**body, "stream": True})  # a cached null used to give 500 here
    assert streamed.status == 200 and events_of(await streamed.read())[-1] == "[DONE]"
    await assert_next_call_reaches_the_upstream(trusting, standin, path, {**body, "max_tokens": 5})


async def test_one_bad_200_then_a_good_answer_is_the_good_answer_cached(
    trusting: RunningGateway, standin: StandIn
) -> None:
    standin.script = [Fault("body", body={"choices": []})]
    response = await trusting.post("/v1/completions", TEXT)
    assert response.status == 200 and entries(trusting) == 1
    assert (await trusting.post("/v1/completions", TEXT)).headers["X-Cache"] == "hit"
    (miss, _hit) = trusting.records()
    assert miss["attempts"] == 2 and miss["failed_attempts"][0]["code"] == "upstream_invalid_response"


def _text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    first, _ = stream_chunks("x")
    first["choices"][0].update(text=text, finish_reason=finish)
    return first


USAGE_ONLY = {
    "id": "u",
    "object": "text_completion",
    "created": 0,
    "model": "standin",
    "choices": [],
    "usage": {},
}


async def test_an_error_event_inside_a_stream_ends_the_clients_stream_with_an_error_and_caches_nothing(
    trusting: RunningGateway, standin: StandIn
) -> None:
    # vLLM's server ends a failing generation like this: an error event, then [DONE].
    standin.script = [Fault("events", events=[_text_chunk(" partial"), ERROR])]
    response = await trusting.post("/v1/completions", {**TEXT, "stream": True})
    events = events_of(await response.read())
    assert events[0]["choices"][0]["text"] == " partial"
    assert events[-1]["error"]["code"] == "upstream_stream_error"
    assert "model overloaded" in events[-1]["error"]["message"]
    assert "[DONE]" not in events  # never a clean end after a truncated answer
    assert entries(trusting) == 0
    (record,) = trusting.records()
    assert record["status"] == 502 and record["failed_attempts"][0]["code"] == "upstream_stream_error"
    await assert_next_call_reaches_the_upstream(
        trusting, standin, "/v1/completions", {**TEXT, "stream": True}
    )


@pytest.mark.parametrize(
    ("events", "include_usage"),
    [
        pytest.param([], False, id="only-done"),
        pytest.param([ERROR], False, id="only-an-error"),
        pytest.param([USAGE_ONLY], False, id="only-usage"),
    ],
)
async def test_a_stream_with_no_answer_in_it_is_a_plain_502_and_caches_nothing(
    trusting: RunningGateway, standin: StandIn, events: list[Any], include_usage: bool
) -> None:
    standin.script = [Fault("events", events=events), Fault("events", events=events)]
    response = await trusting.post("/v1/completions", {**TEXT, "stream": True})
    assert response.status == 502
    assert response.headers["Content-Type"].startswith("application/json")
    assert entries(trusting) == 0
    (record,) = trusting.records()
    assert record["status"] == 502 and len(record["failed_attempts"]) >= 1
    await assert_next_call_reaches_the_upstream(
        trusting, standin, "/v1/completions", {**TEXT, "stream": True}
    )


async def test_a_stream_whose_choice_never_finishes_ends_with_an_error_event_and_caches_nothing(
    trusting: RunningGateway, standin: StandIn
) -> None:
    standin.script = [Fault("events", events=[_text_chunk(" half an"), USAGE_ONLY])]
    body = {**TEXT, "stream": True, "stream_options": {"include_usage": True}}
    response = await trusting.post("/v1/completions", body)
    events = events_of(await response.read())
    assert events[0]["choices"][0]["text"] == " half an"
    assert events[-1]["error"]["code"] == "upstream_invalid_response"
    assert "[DONE]" not in events and entries(trusting) == 0
    (record,) = trusting.records()
    assert record["status"] == 502
    assert orjson.loads(record["failed_attempts"][0]["body"])["choices"][0]["text"] == " half an"
    await assert_next_call_reaches_the_upstream(trusting, standin, "/v1/completions", body)


def _tool_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chat-t",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "standin",
        "choices": [choice],
    }


def calls_of(completion: Any) -> list[dict[str, Any]]:
    """The tool calls of an SDK completion, as plain dicts."""
    return [
        {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in completion.choices[0].message.tool_calls or []
    ]


def _call(index: int, arguments: str, id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """One tool-call fragment of a delta; ``id``, ``type`` and ``name`` come only with the first."""
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id is not None:
        call.update(id=id, type="function")
        call["function"]["name"] = name
    return call


# Two tool calls streamed the way OpenAI and vLLM stream them: id, type and
# name once, the arguments in fragments, the second call interleaved.
TOOL_EVENTS = [
    _tool_chunk({"role": "assistant", "content": None}),
    _tool_chunk({"tool_calls": [_call(0, "", id="call_a", name="get_weather")]}),
    _tool_chunk({"tool_calls": [_call(0, '{"city": ')]}),
    _tool_chunk({"tool_calls": [_call(1, '{"tz"', id="call_b", name="get_time")]}),
    _tool_chunk({"tool_calls": [_call(0, '"Paris"}'), _call(1, ': "CET"}')]}),
    _tool_chunk({}, finish="tool_calls"),
]


async def test_streamed_tool_calls_are_stored_as_whole_calls_the_way_the_openai_sdk_assembles_them(
    trusting: RunningGateway, standin: StandIn
) -> None:
    standin.script = [Fault("events", events=TOOL_EVENTS)]
    client = AsyncOpenAI(base_url=trusting.url + "/v1", api_key="unused", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request: dict[str, Any] = {
        "model": "standin",
        "messages": CHAT["messages"],
        "tools": tools,
        "temperature": 0,
    }
    async with client.chat.completions.stream(**request) as stream:
        live = await stream.get_final_completion()  # the SDK's own accumulation of the miss
    expected = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
    ]
    assert calls_of(live) == expected

    plain = await trusting.post("/v1/chat/completions", request)  # a non-streaming hit of the streamed miss
    assert plain.headers["X-Cache"] == "hit"
    choice = orjson.loads(await plain.read())["choices"][0]
    assert choice["message"]["tool_calls"] == expected and choice["finish_reason"] == "tool_calls"

    async with client.chat.completions.stream(**request) as stream:  # a streamed hit, through the SDK
        replayed = await stream.get_final_completion()
    assert calls_of(replayed) == expected and standin.calls.total() == 1
    await client.close()


async def test_two_deployments_with_one_upstream_model_name_each_get_their_own_answers(
    standin: StandIn, other_standin: StandIn, make_gateway: GatewayFactory
) -> None:
    config = model_yaml(standin.api_base, name="a", upstream_model="standin") + model_yaml(
        other_standin.api_base, name="b", upstream_model="standin"
    ).removeprefix("models:\n")
    gateway = await make_gateway(config)
    for name in ("a", "b"):
        response = await gateway.post("/v1/completions", {**TEXT, "model": name})
        assert response.headers["X-Cache"] == "miss"
    assert standin.calls.total() == 1 and other_standin.calls.total() == 1
    models = {
        m["id"]: m
        for m in orjson.loads(await (await gateway.session.get(gateway.url + "/v1/models")).read())["data"]
    }
    assert models["a"]["cache_namespace"] != models["b"]["cache_namespace"]
    assert standin.api_base not in str(models)  # the namespace names a deployment without exposing its URL


async def test_deployments_sharing_a_cache_namespace_share_answers_on_purpose(
    standin: StandIn, other_standin: StandIn, make_gateway: GatewayFactory
) -> None:
    config = model_yaml(
        standin.api_base, name="a", upstream_model="standin", cache_namespace="smol-weights"
    ) + model_yaml(other_standin.api_base, name="b", cache_namespace="smol-weights").removeprefix("models:\n")
    gateway = await make_gateway(config)
    assert (await gateway.post("/v1/completions", {**TEXT, "model": "a"})).headers["X-Cache"] == "miss"
    assert (await gateway.post("/v1/completions", {**TEXT, "model": "b"})).headers["X-Cache"] == "hit"
    assert other_standin.calls.total() == 0


def test_a_deployment_namespace_ignores_how_a_url_is_spelled_but_not_where_it_points() -> None:
    same = {
        deployment_namespace("openai-compatible", base, "m")
        for base in ("http://127.0.0.1:8001/v1", "HTTP://127.0.0.1:8001/v1/", "http://127.0.0.1:8001/v1")
    }
    assert len(same) == 1
    others = {
        deployment_namespace("openai-compatible", "http://127.0.0.1:8002/v1", "m"),
        deployment_namespace("litellm", "http://127.0.0.1:8001/v1", "m"),
        deployment_namespace("openai-compatible", "http://127.0.0.1:8001/v1", "m2"),
        deployment_namespace("vllm", None, "m", {"model": "/ckpt/full"}),
        deployment_namespace("vllm", None, "m", {"model": "/ckpt/awq"}),
    }
    assert len(others) == 5 and not others & same
    assert deployment_namespace("https", "https://api.example.com:443/v1", "m") == deployment_namespace(
        "https", "https://api.example.com/v1", "m"
    )


def _record(key: str, endpoint: str, response: Any, served: str = "miss", status: int = 200) -> bytes:
    record = {
        "schema": RECORD_SCHEMA,
        "key": key,
        "endpoint": endpoint,
        "served": served,
        "status": status,
        "cacheable": True,
        "response": response,
        "ts": 1.0,
        "ts_end": 1.0,
    }
    return orjson.dumps(record) + b"\n"


def test_a_rebuild_drops_every_entry_that_is_not_an_answer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    folder = run_dir(store, "old")
    folder.mkdir(parents=True)
    bad = [
        ("/v1/completions", ERROR),
        ("/v1/completions", {"choices": []}),
        ("/v1/completions", None),
        ("/v1/completions", [1, 2]),
        ("/v1/chat/completions", completion_body("x")),
        ("/v1/chat/completions", {"choices": [{"index": 0}]}),
        ("/tokenize", {"count": 1}),
    ]
    lines = [_record(f"bad{i}", endpoint, body) for i, (endpoint, body) in enumerate(bad)]
    lines += [
        _record("good-text", "/v1/completions", completion_body("x")),
        _record("good-chat", "/v1/chat/completions", completion_body("x", chat=True)),
        _record("good-tokens", "/tokenize", {"count": 1, "tokens": [5], "max_model_len": 8}),
    ]
    (folder / "1-host-1.jsonl").write_bytes(b"".join(lines))
    assert rebuild_index(store) == 3
