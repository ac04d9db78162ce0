"""Paid answers are never lost: an odd ``usage``, a refused or garbled micro-batch, a shutdown mid-call.

Whatever the upstream was paid for is kept and recorded; a failure is recorded
too, and is only ever the failing request's own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from gateway.app import PIPELINE
from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.processes import GatewayProcess, until
from tests.standin import Fault, StandIn, completion_body

BODY = {"model": "standin", "prompt": "hello", "max_tokens": 4, "temperature": 0}
PRICED = "{input_per_mtok: 1000000, output_per_mtok: 2000000}"  # $1 / $2 a token: costs show
RETRIES = "{attempts: 3, initial_s: 0.01, max_s: 0.05}"


async def priced(make_gateway: GatewayFactory, standin: StandIn, **extra: Any) -> RunningGateway:
    return await make_gateway(
        model_yaml(standin.api_base, name="standin", cost=PRICED, retries=RETRIES, timeout_s=5, **extra)
    )


def with_usage(usage: Any, prompt: str = "hello") -> dict[str, Any]:
    return {**completion_body(prompt), "usage": usage}


# -- usage an upstream got wrong -------------------------------------------------------

ODD_USAGES = [
    {"prompt_tokens": "12", "completion_tokens": 4, "total_tokens": 16},
    {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
    {"prompt_tokens": {"text": 3}, "completion_tokens": 4},
    {"prompt_tokens": 3, "completion_tokens": -4, "total_tokens": -1},
    {"prompt_tokens": True, "completion_tokens": 4.5},
    "seven",
]


def assert_counted(record: dict[str, Any]) -> None:
    usage = record["usage"]
    assert record["status"] == 200 and record["usage_counted"] is True
    assert all(type(usage[k]) is int and usage[k] >= 0 for k in ("prompt_tokens", "completion_tokens"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert record["cost_usd"] == usage["prompt_tokens"] + 2 * usage["completion_tokens"]


@pytest.mark.parametrize("usage", ODD_USAGES, ids=range(len(ODD_USAGES)))
async def test_an_answer_with_non_numeric_usage_is_kept_recorded_and_counted_by_the_gateway(
    make_gateway: GatewayFactory, standin: StandIn, usage: Any
) -> None:
    gateway = await priced(make_gateway, standin)
    standin.script = [Fault("body", body=with_usage(usage))]
    response = await gateway.post("/v1/completions", BODY)
    assert response.status == 200, await response.read()
    assert orjson.loads(await response.read())["choices"] == with_usage(usage)["choices"]
    again = await gateway.post("/v1/completions", BODY)
    assert again.headers["X-Cache"] == "hit"
    assert standin.calls["/v1/completions"] == 1  # paid once, never again
    miss, hit = gateway.records()
    assert_counted(miss)
    assert hit["served"] == "hit" and hit["cost_usd"] == 0 and hit["cost_saved_usd"] == miss["cost_usd"]


async def test_a_stream_with_non_numeric_usage_is_kept_recorded_and_counted_by_the_gateway(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    gateway = await priced(make_gateway, standin)
    standin.script = [Fault("body", body=with_usage({"prompt_tokens": "12", "completion_tokens": "4"}))]
    response = await gateway.post("/v1/completions", {**BODY, "stream": True})
    assert response.status == 200 and (await response.read()).endswith(b"data: [DONE]\n\n")
    (record,) = gateway.records()
    assert_counted(record)


async def test_a_batch_with_non_numeric_usage_is_kept_and_each_member_counted(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    gateway = await priced(make_gateway, standin, batching="{window_ms: 1000, max_batch: 2}")
    both = completion_body("a")
    both["choices"] = [{**both["choices"][0], "index": i, "text": f" to {p}"} for i, p in enumerate("ab")]
    standin.script = [
        Fault("body", body={**both, "usage": {"prompt_tokens": {"a": 1}, "completion_tokens": 8}})
    ]
    responses = await asyncio.gather(*(gateway.post("/v1/completions", {**BODY, "prompt": p}) for p in "ab"))
    assert [r.status for r in responses] == [200, 200]
    assert standin.calls["/v1/completions"] == 1
    for record in gateway.records():
        assert record["served"] == "batched"
        assert_counted(record)


# -- micro-batches that fail -----------------------------------------------------------

BATCH_OF_TWO = "{window_ms: 1000, max_batch: 2}"


def two_choices(count: int = 2) -> dict[str, Any]:
    answer = completion_body("a")
    answer["choices"] = [{**answer["choices"][0], "index": i, "text": f" {i}"} for i in range(count)]
    return answer


async def ask_together(gateway: RunningGateway, prompts: list[Any], **body: Any) -> list[Any]:
    return await asyncio.gather(
        *(gateway.post("/v1/completions", {**BODY, **body, "prompt": p}) for p in prompts)
    )


@pytest.mark.parametrize(
    "wrong", [two_choices(1), two_choices(3), {**two_choices(), "choices": None}], ids=["1", "3", "none"]
)
async def test_a_batch_answer_with_the_wrong_choices_is_a_recorded_failed_attempt_and_retried(
    make_gateway: GatewayFactory, standin: StandIn, wrong: dict[str, Any]
) -> None:
    gateway = await priced(make_gateway, standin, batching=BATCH_OF_TWO)
    standin.script = [Fault("body", body=wrong), Fault("body", body=two_choices())]
    responses = await ask_together(gateway, ["a", "b"])
    assert [r.status for r in responses] == [200, 200]
    assert standin.calls["/v1/completions"] == 2
    for record in gateway.records():
        assert (record["status"], record["served"], record["attempts"]) == (200, "batched", 2)
        (failed,) = record["failed_attempts"]
        assert (failed["status"], failed["code"]) == (502, "upstream_invalid_response")


async def test_a_batch_answer_that_stays_unusable_gives_each_member_a_recorded_502(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    gateway = await priced(make_gateway, standin, batching=BATCH_OF_TWO)
    standin.script = [Fault("body", body=two_choices(1)) for _ in range(3)]
    responses = await ask_together(gateway, ["a", "b"])
    assert [r.status for r in responses] == [502, 502]
    for response in responses:
        assert orjson.loads(await response.read())["error"]["code"] == "upstream_invalid_response"
    records = gateway.records()
    assert [(r["status"], r["attempts"], len(r["failed_attempts"])) for r in records] == [(502, 3, 3)] * 2
    assert standin.calls["/v1/completions"] == 3


async def test_a_batch_the_upstream_refuses_is_asked_again_member_by_member(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    gateway = await priced(make_gateway, standin, batching=BATCH_OF_TWO)
    standin.script = [Fault("status", 400, "one prompt is too long"), Fault("status", 400, "too long")]
    responses = await ask_together(gateway, ["a", "b"])
    assert sorted(r.status for r in responses) == [200, 400]  # only one member's own 400
    assert standin.calls["/v1/completions"] == 3  # the batch, then each alone
    assert sorted(len(b["prompt"]) if isinstance(b["prompt"], list) else 1 for b in standin.bodies_seen) == [
        1,
        1,
        2,
    ]
    records = sorted(gateway.records(), key=lambda r: r["status"])
    assert [(r["status"], r["served"], r["attempts"]) for r in records] == [
        (200, "miss", 2),
        (400, "miss", 2),
    ]
    assert all(r["failed_attempts"][0]["status"] == 400 for r in records)


async def test_one_prompt_over_max_model_len_fails_alone_in_a_real_vllm_batch(
    relay: Any, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(
        model_yaml(relay.url + "/v1", batching="{window_ms: 1000, max_batch: 3}", retries="{attempts: 1}")
    )
    too_long = "word " * 3000  # over the test vLLM's --max-model-len 2048
    prompts = ["The capital of France is", too_long, "One, two, three,"]
    responses = await ask_together(gateway, prompts, model="smollm2", max_tokens=2, temperature=0)
    assert [r.status for r in responses] == [200, 400, 200]
    assert "maximum context length" in orjson.loads(await responses[1].read())["error"]["message"]
    assert relay.calls["/v1/completions"] == 4  # the refused list, then each prompt alone
    by_prompt = {r["request"]["prompt"][:30]: r for r in gateway.records()}
    assert [by_prompt[p[:30]]["status"] for p in prompts] == [200, 400, 200]
    again = await gateway.post(
        "/v1/completions",
        {**BODY, "model": "smollm2", "max_tokens": 2, "temperature": 0, "prompt": prompts[0]},
    )
    assert again.headers["X-Cache"] == "hit"


# -- shutdown with upstream calls in flight --------------------------------------------


def serving(tmp_path: Path, standin: StandIn, shutdown_timeout_s: float) -> GatewayProcess:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        model_yaml(standin.api_base, name="standin", retries="{attempts: 1}")
        + f"shutdown_timeout_s: {shutdown_timeout_s}\n"
    )
    gateway = GatewayProcess(config, tmp_path / "store", tmp_path / "gateway.log")
    gateway.start()
    return gateway


def records_of(tmp_path: Path) -> list[dict[str, Any]]:
    return list(read_records(shard_paths(run_dir(tmp_path / "store", "default"))))


async def first_event(response: aiohttp.ClientResponse) -> bytes:
    event = await response.content.readuntil(b"\n\n")
    assert event.startswith(b"data: {"), event
    return event


async def test_a_stream_cut_by_the_shutdown_deadline_ends_with_an_error_event_and_is_recorded(
    standin: StandIn, tmp_path: Path
) -> None:
    gateway = serving(tmp_path, standin, shutdown_timeout_s=0.5)
    try:
        async with aiohttp.ClientSession() as session:
            await gateway.wait_healthy(session)
            standin.script = [Fault("slow_stream")]  # one event, then nothing until released
            async with session.post(
                gateway.url + "/v1/completions", json={**BODY, "stream": True}
            ) as response:
                await first_event(response)
                gateway.terminate()
                rest = await response.content.read()
        assert gateway.stop() == 0, gateway.log_tail()
    finally:
        standin.released.set()
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
    events = [e for e in rest.split(b"\n\n") if e]
    assert b"[DONE]" not in rest
    assert orjson.loads(events[-1].removeprefix(b"data: "))["error"]["code"] == "shutting_down"
    (record,) = records_of(tmp_path)
    assert (record["status"], record["error"]["message"]) == (503, "gateway shutting down")


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/completions", BODY), ("/v1/embeddings", {"model": "standin", "input": ["cut", "short"]})],
)
async def test_a_plain_call_cut_by_the_shutdown_deadline_gets_a_recorded_503(
    standin: StandIn, tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    gateway = serving(tmp_path, standin, shutdown_timeout_s=0.5)
    try:
        async with aiohttp.ClientSession() as session:
            await gateway.wait_healthy(session)
            standin.script = [Fault("hang")]
            asked = asyncio.ensure_future(session.post(gateway.url + path, json=body))
            await standin.arrived.wait()
            gateway.terminate()
            response = await asked
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "shutting_down"
        assert gateway.stop() == 0, gateway.log_tail()
    finally:
        standin.released.set()
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
    (record,) = records_of(tmp_path)
    assert record["status"] == 503


async def test_shutdown_waits_for_a_stream_whose_client_hung_up_and_records_it(
    standin: StandIn, tmp_path: Path
) -> None:
    gateway = serving(tmp_path, standin, shutdown_timeout_s=30)
    try:
        async with aiohttp.ClientSession() as session:
            await gateway.wait_healthy(session)
            standin.script = [Fault("slow_stream")]
            async with aiohttp.ClientSession() as leaving:
                response = await leaving.post(gateway.url + "/v1/completions", json={**BODY, "stream": True})
                await first_event(response)
                response.close()  # the client hangs up mid-stream
            gateway.terminate()
            await until(draining(gateway), 30, "the gateway to wait for the upstream call")
            assert gateway.process is not None and gateway.process.poll() is None  # still waiting
            standin.released.set()
            # Wait without blocking this loop: the stand-in serving the rest of the stream runs on it.
            await until(exited(gateway), 60, "the gateway to exit")
        assert gateway.stop() == 0, gateway.log_tail()
    finally:
        standin.released.set()
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
    (record,) = records_of(tmp_path)
    assert record["status"] == 200, (record, gateway.log_tail())
    assert "the rest" in record["response"]["choices"][0]["text"]


def exited(gateway: GatewayProcess) -> Any:
    async def check() -> bool:
        return gateway.process is not None and gateway.process.poll() is not None

    return check


def draining(gateway: GatewayProcess) -> Any:
    """Whether the gateway has said it is waiting for upstream calls (a log line, not a guess)."""

    async def check() -> bool:
        return "waiting up to" in gateway.log.read_text(errors="replace")

    return check


async def test_batched_calls_cut_by_the_shutdown_deadline_are_each_recorded(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    gateway = await priced(make_gateway, standin, batching=BATCH_OF_TWO)
    standin.script = [Fault("hang")]  # held until the test ends: past any deadline
    asked = asyncio.ensure_future(ask_together(gateway, ["a", "b"]))
    await standin.arrived.wait()
    await gateway.app[PIPELINE].drain(0.1)
    responses = await asked
    assert [r.status for r in responses] == [503, 503]
    records = gateway.records()
    assert [(r["status"], r["error"]["code"]) for r in records] == [(503, "shutting_down")] * 2
