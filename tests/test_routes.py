"""The routes clients expect, each from the endpoint table: Responses, embeddings, health, one model.

Each is driven by the client that calls it in the wild (the openai SDK), twice:
the second time costs no upstream call and gives the identical answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import openai
import orjson
import pytest
from openai import AsyncOpenAI

from cache.index import rebuild_index
from gateway.openapi import openapi_path
from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.standin import StandIn
from tests.upstreams import CountingRelay, free_port


def sdk(gateway: RunningGateway, run: str = "routes") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gateway.url}/runs/{run}/v1", api_key="unused", max_retries=0)


async def test_responses_create_is_cached_plain_and_streamed(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    client = sdk(gateway)
    ask: dict[str, Any] = {
        "model": "smollm2",
        "input": "Name a colour.",
        "max_output_tokens": 8,
        "temperature": 0,
    }
    first = await client.responses.create(**ask)
    again = await client.responses.create(**ask)
    assert relay.total == 1 and again.model_dump() == first.model_dump() and first.output_text

    async def streamed() -> tuple[list[str], str]:
        kinds, text = [], ""
        async with await client.responses.create(**{**ask, "input": "Name a fruit."}, stream=True) as events:
            async for event in events:
                kinds.append(event.type)
                if event.type == "response.completed":
                    text = event.response.output_text
        return kinds, text

    miss_kinds, miss_text = await streamed()
    assert relay.total == 2 and miss_kinds[-1] == "response.completed" and miss_text
    hit_kinds, hit_text = await streamed()  # replayed from the cache as an equivalent event stream
    assert relay.total == 2 and hit_text == miss_text
    assert {"response.created", "response.output_text.delta", "response.completed"} <= set(hit_kinds)
    async with client.responses.stream(
        **{**ask, "input": "Name a fruit."}
    ) as helper:  # the SDK's own folding
        final = await helper.get_final_response()
    assert final.output_text == miss_text and relay.total == 2
    await client.close()


async def test_embeddings_are_cached_per_input_and_only_the_missing_ones_go_upstream(
    standin: StandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(model_yaml(standin.api_base, name="embed"))
    client = sdk(gateway)
    first = await client.embeddings.create(model="embed", input=[f"doc {i}" for i in range(5)])
    assert standin.calls["/v1/embeddings"] == 1 and len(first.data) == 5
    mixed = [f"doc {i}" for i in range(7)][::-1] + ["doc 6"]  # 5 cached, 2 new, one repeated
    second = await client.embeddings.create(model="embed", input=mixed)
    assert standin.calls["/v1/embeddings"] == 2
    assert standin.bodies_seen[-1]["input"] == ["doc 6", "doc 5"]  # only the missing inputs, once each
    assert [d.index for d in second.data] == list(range(8))
    by_text = {f"doc {i}": d.embedding for i, d in enumerate(first.data)}
    assert [d.embedding for d in second.data][2:7] == [by_text[t] for t in mixed[2:7]]
    again = await client.embeddings.create(model="embed", input=mixed)
    assert standin.calls["/v1/embeddings"] == 2 and again.model_dump() == second.model_dump()
    await client.close()

    assert rebuild_index(gateway.cache_dir) == 7  # one entry per input paid for, rebuilt from the records
    rebuilt = await make_gateway(model_yaml(standin.api_base, name="embed"), cache_dir=gateway.cache_dir)
    other = sdk(rebuilt, "after-rebuild")
    single = await other.embeddings.create(model="embed", input="doc 3")
    assert standin.calls["/v1/embeddings"] == 2 and single.data[0].embedding == by_text["doc 3"]
    await other.close()


async def test_models_retrieve_and_the_health_routes_answer_at_every_root(
    standin: StandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(model_yaml(standin.api_base, name="org/standin"))
    client = sdk(gateway)
    model = await client.models.retrieve("org/standin")
    assert model.id == "org/standin" and model.owned_by == "openai-compatible"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nothing")
    for path in ("/health", "/v1/health", "/healthz", "/runs/x/health", "/runs/x/v1/health"):
        response = await gateway.session.get(gateway.url + path)
        assert response.status == 200 and (await response.json())["status"] == "ok", path
    await client.close()


async def test_a_tokenizer_request_naming_no_model_is_ambiguous_with_several_models(
    standin: StandIn, other_standin: StandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(
        model_yaml(standin.api_base, name="a")
        + model_yaml(other_standin.api_base, name="b").removeprefix("models:\n")
    )
    response = await gateway.session.get(gateway.url + "/tokenizer_info")
    error = (await response.json())["error"]
    assert response.status == 400 and error["code"] == "model_required"
    assert "a, b" in error["message"]
    assert standin.calls.total() == other_standin.calls.total() == 0


async def test_every_route_is_described_and_the_validator_agrees_with_the_published_schema(
    standin: StandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(model_yaml(standin.api_base, name="standin"))
    spec = await (await gateway.session.get(gateway.url + "/openapi.json")).json()
    for route in gateway.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/ui") or path == "/runs/{tail}":
            continue  # the dashboard's pages and the catch-all for bad run-ids are not API
        assert route.method.lower() in spec["paths"][openapi_path(path)], path
    bodies = [
        {"model": "standin", "prompt": "x", "temperature": 0},
        {"model": "standin", "prompt": []},
        {"model": "standin", "prompt": [[]]},
        {"model": "standin", "prompt": [1, 2], "max_tokens": -1},
        {"model": "standin", "prompt": "x", "stream_options": None, "max_completion_tokens": 3},
        {"model": "standin", "prompt": "x", "n": 0},
        {"model": "standin", "prompt": "x", "logprobs": True},
        {"model": "standin"},
    ]
    schema = spec["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for body in bodies:
        accepted = jsonschema.Draft202012Validator(schema).is_valid(body)
        response = await gateway.post("/v1/completions", body)
        assert (response.status != 400) == accepted, (body, response.status, await response.read())


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port()))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"port: {port}\ncache_dir: {tmp_path / 'store'}\n" + model_yaml("http://127.0.0.1:9/v1")
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    taken.close()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], done.stderr
    assert "serving" not in done.stderr and "Traceback" not in done.stderr


def test_the_published_schema_is_the_one_the_validator_uses() -> None:
    from gateway.endpoints import BY_PATH

    completions = BY_PATH["/v1/completions"].body
    assert completions is not None
    assert orjson.loads(orjson.dumps(completions))["properties"]["prompt"]["oneOf"][2]["minItems"] == 1


async def test_a_provider_added_as_one_registered_module_is_served(
    tmp_path: Path, make_gateway: GatewayFactory
) -> None:
    import tests.echo_provider  # noqa: F401  (registering is all it takes)

    gateway = await make_gateway(
        "models:\n  - name: parrot\n    provider: echo\n    retries: {attempts: 2, initial_s: 0}\n"
    )
    body = {"model": "parrot", "prompt": "polly", "temperature": 0}
    first, again = [await gateway.post("/v1/completions", body) for _ in range(2)]
    assert orjson.loads(await first.read())["choices"][0]["text"] == "polly"
    assert [first.headers["X-Cache"], again.headers["X-Cache"]] == ["miss", "hit"]
    unsupported = await gateway.post(
        "/v1/chat/completions", {"model": "parrot", "messages": [{"role": "user"}]}
    )
    assert unsupported.status == 501  # what it does not declare, it is never asked
    busy = await gateway.post("/v1/completions", {**body, "prompt": "fail"})
    assert (
        busy.status == 429 and gateway.records()[-1]["attempts"] == 2
    )  # the shared failure mapping retried it
    assert gateway.records()[0]["cost_usd"] == 0  # local: free per token, from its capabilities


def test_an_unknown_provider_is_refused_at_config_load_naming_the_registered_ones() -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="unknown provider 'nope'.*openai-compatible"):
        parse_config("models:\n  - name: m\n    provider: nope\n", "test")


async def test_a_models_root_names_the_model_for_requests_that_name_none(
    relay: CountingRelay, standin: StandIn, make_gateway: GatewayFactory
) -> None:
    # lm-eval's remote tokenizer never sends a model: base_url=.../models/smol/v1/completions names it.
    gateway = await make_gateway(
        model_yaml(standin.api_base, name="other")
        + model_yaml(relay.url + "/v1", name="smol", upstream_model="smollm2").removeprefix("models:\n")
    )
    root = gateway.url + "/runs/lm/models/smol"
    info = await gateway.session.get(root + "/tokenizer_info")
    assert info.status == 200 and "eos_token" in await info.json()
    tokens = await gateway.post(
        "/runs/lm/models/smol/tokenize", {"prompt": "hello", "add_special_tokens": False}
    )
    assert tokens.status == 200 and (await tokens.json())["tokens"]
    completion = await gateway.post(
        "/runs/lm/models/smol/v1/completions",
        {"model": "smol", "prompt": "Hi", "max_tokens": 2, "temperature": 0},
    )
    assert completion.status == 200 and standin.calls.total() == 0
    assert {r["model"] for r in gateway.records("lm")} == {"smol"}
    unknown = await gateway.session.get(gateway.url + "/models/nothing/tokenizer_info")
    assert unknown.status == 404
