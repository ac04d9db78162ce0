"""Sampled requests: k asks in a run are k draws, and a replay under another run gets them back in order."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.standin import Fault, StandIn
from tests.test_lmeval import RUNNER, TASK_DIR, offline_env, run_in_task_dir
from tests.upstreams import CountingRelay

SAMPLED = {"model": "smollm2", "prompt": "Write one word about the sea:", "max_tokens": 8, "temperature": 1.0}
GREEDY = {**SAMPLED, "temperature": 0}
TASK = "replaygate_arith_sampled"
K = 8


async def ask(gateway: RunningGateway, run: str, body: dict[str, Any], **headers: str) -> tuple[int, str]:
    """One request under ``run``: the sample index the gateway gave it, and its text."""
    response = await gateway.post(f"/runs/{run}/v1/completions", body, headers=headers)
    assert response.status == 200, await response.read()
    text = orjson.loads(await response.read())["choices"][0]["text"]
    return int(response.headers["X-Sample-Index"]), text


async def test_k_sequential_samples_in_a_run_are_k_draws_and_a_new_run_replays_them_in_order(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    first = [await ask(gateway, "draws-1", SAMPLED) for _ in range(K)]
    assert [index for index, _ in first] == list(range(K))
    assert relay.total == K
    assert len({text for _, text in first}) > 1  # eight draws at temperature 1, not one answer eight times
    replay = [await ask(gateway, "draws-2", SAMPLED) for _ in range(K)]
    assert replay == first and relay.total == K


async def test_k_concurrent_samples_are_k_calls_and_a_concurrent_replay_gets_each_index_its_sample(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    first = dict(await asyncio.gather(*(ask(gateway, "burst-1", SAMPLED) for _ in range(K))))
    assert sorted(first) == list(range(K)) and relay.total == K
    assert len(set(first.values())) > 1
    replay = dict(await asyncio.gather(*(ask(gateway, "burst-2", SAMPLED) for _ in range(K))))
    assert replay == first and relay.total == K
    streamed = await gateway.post("/runs/burst-3/v1/completions", {**SAMPLED, "stream": True})
    assert streamed.headers["X-Cache"] == "hit" and streamed.headers["X-Sample-Index"] == "0"
    text = "".join(
        orjson.loads(event[6:])["choices"][0]["text"]
        for event in (await streamed.read()).split(b"\n\n")
        if event.startswith(b"data: {")
    )
    assert text == first[0] and relay.total == K


async def test_a_pinned_sample_index_does_not_depend_on_the_order_of_arrival(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    order = [3, 1, 2, 0]
    first = {i: await ask(gateway, "pinned-1", SAMPLED, **{"X-Sample-Index": str(i)}) for i in order}
    assert all(index == i for i, (index, _) in first.items()) and relay.total == 4
    for i in sorted(order):
        assert await ask(gateway, "pinned-2", SAMPLED, **{"X-Sample-Index": str(i)}) == first[i]
    assert relay.total == 4


async def test_identical_greedy_requests_still_share_one_call_and_one_entry(
    gateway: RunningGateway, relay: CountingRelay
) -> None:
    responses = await asyncio.gather(*(gateway.post("/runs/g/v1/completions", GREEDY) for _ in range(5)))
    assert relay.total == 1
    assert all("X-Sample-Index" not in r.headers for r in responses)
    assert (await gateway.post("/runs/g2/v1/completions", GREEDY)).headers["X-Cache"] == "hit"


@pytest.mark.parametrize("header", ["-1", "one", "1.5", "", "99999999999", "١"])
async def test_a_bad_sample_index_is_a_400_and_nothing_is_sent(
    standin: StandIn, make_gateway: GatewayFactory, header: str
) -> None:
    gateway = await make_gateway(model_yaml(standin.api_base, name="standin"))
    body = {**SAMPLED, "model": "standin"}
    response = await gateway.post("/v1/completions", body, headers={"X-Sample-Index": header})
    assert response.status == 400
    assert orjson.loads(await response.read())["error"]["code"] == "invalid_sample_index"
    assert standin.calls.total() == 0


async def test_sample_counting_survives_a_restart_because_it_comes_from_the_records(
    standin: StandIn, make_gateway: GatewayFactory, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "shared-store"
    body = {**SAMPLED, "model": "standin"}
    before = await make_gateway(model_yaml(standin.api_base, name="standin"), cache_dir=store)
    assert [(await ask(before, "r", body))[0] for _ in range(2)] == [0, 1]
    after = await make_gateway(model_yaml(standin.api_base, name="standin"), cache_dir=store)
    assert (await ask(after, "r", body))[0] == 2  # not sample 0 again
    assert standin.calls.total() == 3


async def test_a_failed_sample_gives_its_index_back_to_the_retry(
    standin: StandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(model_yaml(standin.api_base, name="standin", retries="{attempts: 1}"))
    body = {**SAMPLED, "model": "standin"}
    standin.script = [Fault("status", 400, "no")]
    assert (await gateway.post("/v1/completions", body)).status == 400
    assert (await ask(gateway, "default", body))[0] == 0


async def test_a_streamed_follower_gets_the_leaders_events_as_they_arrive(
    standin: StandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(model_yaml(standin.api_base, name="standin"))
    body = {**GREEDY, "model": "standin", "stream": True}
    standin.script = [Fault("slow_stream")]
    url = gateway.url + "/v1/completions"
    async with gateway.session.post(url, json=body) as leader:
        assert leader.headers["X-Cache"] == "miss"
        assert (await leader.content.readuntil(b"\n\n")).startswith(b"data: {")
        async with gateway.session.post(url, json=body) as follower:
            assert follower.headers["X-Cache"] == "coalesced"
            first = await follower.content.readuntil(b"\n\n")  # while the upstream still holds the rest
            assert not standin.released.is_set() and b"answer to" in first
            standin.released.set()
            rest = await follower.content.read()
        assert (await leader.content.read()).endswith(b"data: [DONE]\n\n") and rest.endswith(
            b"data: [DONE]\n\n"
        )
    assert standin.calls.total() == 1
    assert [r["served"] for r in gateway.records()] == ["miss", "coalesced"]


@pytest.mark.lmeval
async def test_lm_eval_repeats_send_every_draw_once_and_a_new_run_replays_them_all(
    gateway: RunningGateway, relay: CountingRelay, tmp_path: Path
) -> None:
    async def evaluate(run: str) -> dict[str, Any]:
        out = tmp_path / f"{run}.json"
        base_url = f"{gateway.url}/runs/{run}/v1/completions"
        # num_concurrent=1 (lm-eval's default): the draws of a question arrive in lm-eval's own order.
        command = [sys.executable, str(RUNNER), base_url, str(TASK_DIR), str(out), "--num-concurrent=1", TASK]
        await run_in_task_dir(command, offline_env(tmp_path))
        return dict(json.loads(out.read_text()))

    first = await evaluate("repeats-1")
    documents = len(first["samples"][TASK])
    generated = [r for r in gateway.records("repeats-1") if r["endpoint"] == "/v1/completions"]
    assert relay.calls["/v1/completions"] == 4 * documents == len(generated)
    assert sorted({r["sample"] for r in generated}) == [0, 1, 2, 3]
    calls = relay.total
    second = await evaluate("repeats-2")
    assert relay.total == calls  # every draw replayed from the cache
    assert second["samples"] == first["samples"] and second["results"] == first["results"]
