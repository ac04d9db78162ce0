"""Upstream scheduling: retries, rate limits, adaptive concurrency, backpressure, micro-batching."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.scheduler import MAX_PAUSE_S, Limits, Scheduler, TokenBucket, parse_duration
from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.standin import Fault, StandIn
from tests.upstreams import CountingRelay

BODY = {"model": "standin", "prompt": "hello", "max_tokens": 4, "temperature": 0}
FAST_RETRIES = "{attempts: 3, initial_s: 0.01, max_s: 0.05}"


async def gateway_for(make_gateway: GatewayFactory, standin: StandIn, **extra: object) -> RunningGateway:
    extra.setdefault("retries", FAST_RETRIES)
    extra.setdefault("timeout_s", 0.5)
    return await make_gateway(model_yaml(standin.api_base, name="standin", **extra))


# -- retries -------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        [Fault("status", 429, headers={"Retry-After": "0"})],
        [Fault("status", 429, headers={"retry-after-ms": "10"})],
        [Fault("status", 429)],
        [Fault("status", 500), Fault("status", 503)],
        [Fault("hang")],
        [Fault("drop")],
        [Fault("invalid_json")],
    ],
    ids=[
        "429-retry-after",
        "429-retry-after-ms",
        "429-bare",
        "500-then-503",
        "timeout",
        "dropped",
        "invalid-json",
    ],
)
async def test_failures_that_may_pass_are_retried_and_every_attempt_is_recorded(
    make_gateway: GatewayFactory, standin: StandIn, faults: list[Fault]
) -> None:
    gateway = await gateway_for(make_gateway, standin)
    standin.script = list(faults)
    response = await gateway.post("/v1/completions", BODY)
    assert response.status == 200
    assert standin.calls["/v1/completions"] == len(faults) + 1
    (record,) = gateway.records()
    assert record["attempts"] == len(faults) + 1
    assert len(record["failed_attempts"]) == len(faults)
    assert (await gateway.post("/v1/completions", BODY)).headers["X-Cache"] == "hit"


async def test_other_client_errors_are_never_retried(make_gateway: GatewayFactory, standin: StandIn) -> None:
    gateway = await gateway_for(make_gateway, standin)
    standin.script = [Fault("status", 422, "bad logit_bias")]
    response = await gateway.post("/v1/completions", BODY)
    assert response.status == 422
    assert standin.calls["/v1/completions"] == 1


async def test_exhausted_retries_give_the_last_error_and_cache_nothing(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    gateway = await gateway_for(make_gateway, standin)
    standin.script = [
        Fault("status", 500, "first"),
        Fault("status", 502, "second"),
        Fault("status", 503, "third"),
    ]
    response = await gateway.post("/v1/completions", BODY)
    assert response.status == 503
    assert "third" in orjson.loads(await response.read())["error"]["message"]
    (record,) = gateway.records()
    assert [a["status"] for a in record["failed_attempts"]] == [500, 502, 503]
    assert record["attempts"] == 3 and record["status"] == 503
    assert (await gateway.post("/v1/completions", BODY)).headers["X-Cache"] == "miss"


# -- limits ----------------------------------------------------------------------


async def test_rpm_limit_holds_over_a_burst(make_gateway: GatewayFactory, standin: StandIn) -> None:
    # 60 rpm: a full bucket lets 60 go at once, then one a second.
    gateway = await gateway_for(make_gateway, standin, rpm=60)
    burst = [{**BODY, "prompt": f"p{i}"} for i in range(63)]
    responses = await asyncio.gather(*(gateway.post("/v1/completions", b) for b in burst))
    assert all(r.status == 200 for r in responses)
    arrivals = sorted(standin.arrivals)
    assert len(arrivals) == 63
    jitter = 0.25  # seconds between leaving the gateway and arriving here, on a loaded 2-core machine
    for i, start in enumerate(arrivals):  # in every window, at most the bucket plus its refill
        for j in range(i, len(arrivals)):
            assert j - i + 1 <= 60 + (arrivals[j] - start + jitter) * 1.0


async def test_tpm_limit_holds_input_plus_expected_output(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    # 60 tokens a minute; each request reserves 1 prompt token + 10 for max_tokens: 5 fit.
    gateway = await gateway_for(make_gateway, standin, tpm=60, timeout_s=30)
    standin.script = [Fault("hang") for _ in range(8)]
    body = {**BODY, "max_tokens": 10}
    tasks = [
        asyncio.ensure_future(gateway.post("/v1/completions", {**body, "prompt": f"q{i}"})) for i in range(8)
    ]
    while standin.calls["/v1/completions"] < 5:
        standin.arrived.clear()
        await standin.arrived.wait()
    scheduler = gateway.upstream("standin").scheduler
    assert standin.calls["/v1/completions"] == 5
    assert scheduler.queue_depth == 3  # the sixth needs 6 more tokens: 6 s of refill
    for task in tasks:
        task.cancel()
    standin.released.set()


async def test_a_full_queue_answers_429_with_retry_after(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    gateway = await gateway_for(make_gateway, standin, max_concurrency=1, max_queue=2, timeout_s=30)
    standin.script = [Fault("hang")]
    first = asyncio.ensure_future(gateway.post("/v1/completions", {**BODY, "prompt": "a"}))
    await standin.arrived.wait()
    queued = [asyncio.ensure_future(gateway.post("/v1/completions", {**BODY, "prompt": p})) for p in "bc"]
    scheduler = gateway.upstream("standin").scheduler
    while scheduler.queue_depth < 2:
        await asyncio.sleep(0)  # let the two queued requests reach the scheduler
    rejected = await gateway.post("/v1/completions", {**BODY, "prompt": "d"})
    assert rejected.status == 429
    assert int(rejected.headers["Retry-After"]) >= 1
    assert orjson.loads(await rejected.read())["error"]["code"] == "queue_full"
    standin.released.set()
    assert [r.status for r in await asyncio.gather(first, *queued)] == [200, 200, 200]


async def test_a_stream_refused_by_a_full_queue_gets_a_plain_429(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    gateway = await gateway_for(make_gateway, standin, max_concurrency=1, max_queue=0, timeout_s=30)
    standin.script = [Fault("hang")]
    first = asyncio.ensure_future(gateway.post("/v1/completions", {**BODY, "prompt": "a"}))
    await standin.arrived.wait()
    refused = await gateway.post("/v1/completions", {**BODY, "prompt": "b", "stream": True})
    assert refused.status == 429 and refused.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(await refused.read())["error"]["code"] == "queue_full"
    standin.released.set()
    assert (await first).status == 200
    assert [r["status"] for r in gateway.records()] == [429, 200]


async def test_429s_shrink_only_that_upstreams_concurrency_and_successes_grow_it_back(
    make_gateway: GatewayFactory, standin: StandIn, other_standin: StandIn
) -> None:
    config = model_yaml(standin.api_base, name="standin", retries=FAST_RETRIES) + "\n".join(
        model_yaml(other_standin.api_base, name="other").splitlines()[1:]
    )
    gateway = await make_gateway(config + "\n")
    throttled, healthy = gateway.upstream("standin").scheduler, gateway.upstream("other").scheduler
    standin.script = [Fault("status", 429, headers={"Retry-After": "1"})]
    slow = asyncio.ensure_future(gateway.post("/v1/completions", BODY))
    await standin.arrived.wait()
    other = await gateway.post("/v1/completions", {**BODY, "model": "other"})
    assert other.status == 200 and not slow.done()  # the other upstream is not paused
    assert (await slow).status == 200
    assert throttled.concurrency_limit < 33 and healthy.concurrency_limit == 64
    shrunk = throttled.concurrency_limit
    for i in range(40):
        await gateway.post("/v1/completions", {**BODY, "prompt": f"grow {i}"})
    assert throttled.concurrency_limit > shrunk + 1


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("2.5", 2.5),
        ("soon", None),
        ("", None),
    ],
)
def test_rate_limit_reset_durations_parse_as_openai_writes_them(value: str, seconds: float | None) -> None:
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


async def test_an_exhausted_budget_pauses_the_upstream_until_its_reset() -> None:
    scheduler = Scheduler("s", Limits(rpm=100))
    ticket = await scheduler.acquire(1, 1)
    scheduler.release(
        ticket, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}
    )
    assert scheduler.requests is not None and scheduler.requests.level == 0
    assert scheduler._delay(1, 1) == pytest.approx(30, abs=1)  # paused: nothing leaves before the reset


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-tokens": "-100000000"},
        {"x-ratelimit-remaining-requests": "-100000000"},
        {"x-ratelimit-remaining-tokens": "-inf"},
        {"x-ratelimit-remaining-tokens": "nan", "x-ratelimit-reset-tokens": "1s"},
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1e12"},
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "99999h"},
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "nan"},
        {"x-ratelimit-remaining-tokens": "-5", "x-ratelimit-reset-tokens": "-5"},
    ],
)
async def test_hostile_rate_limit_headers_pause_at_most_max_pause(headers: dict[str, str]) -> None:
    scheduler = Scheduler("s", Limits(rpm=60, tpm=600))
    ticket = await scheduler.acquire(1, 1)
    scheduler.release(ticket, headers=headers)
    assert scheduler.tokens is not None and scheduler.requests is not None
    assert scheduler.tokens.level >= 0 and scheduler.requests.level >= 0  # an upstream cannot claim a debt
    delay = scheduler._delay(1, 1)
    assert delay is not None and delay <= MAX_PAUSE_S


async def test_a_negative_remaining_header_on_a_good_answer_does_not_stall_the_model(
    make_gateway: GatewayFactory, standin: StandIn
) -> None:
    # 6000 tokens a minute refill 100 a second: believing -1e8 would stall for ~12 days.
    gateway = await gateway_for(make_gateway, standin, tpm=6000)
    standin.script = [Fault("ok", headers={"x-ratelimit-remaining-tokens": "-100000000"})]
    assert (await gateway.post("/v1/completions", BODY)).status == 200
    later = gateway.post("/v1/completions", {**BODY, "prompt": "next"})
    assert (await asyncio.wait_for(later, 10)).status == 200  # an empty bucket refills in well under a second


def test_token_bucket_starts_full_refills_continuously_and_refunds() -> None:
    now = [0.0]
    bucket = TokenBucket(120, clock=lambda: now[0])  # 2 a second
    assert bucket.wait_for(120) == 0
    bucket.take(120)
    assert bucket.wait_for(1) == pytest.approx(0.5)
    now[0] = 1.0
    assert bucket.wait_for(2) == 0
    bucket.give_back(50)
    assert bucket.level == pytest.approx(52)
    bucket.cap(10)  # the upstream says only 10 are left
    assert bucket.level == 10


async def test_scheduler_is_fifo_and_continuous() -> None:
    scheduler = Scheduler("s", Limits(max_concurrency=2))
    order: list[int] = []

    async def job(i: int) -> None:
        ticket = await scheduler.acquire(1, 1)
        order.append(i)
        await asyncio.sleep(0)
        scheduler.release(ticket)

    await asyncio.gather(*(job(i) for i in range(10)))
    assert order == list(range(10))
    assert scheduler.in_flight == 0


# -- micro-batching ----------------------------------------------------------------


async def test_micro_batching_sends_fewer_calls_and_each_client_gets_its_own_answer(
    relay: CountingRelay, make_gateway: GatewayFactory, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    batched = await make_gateway(
        model_yaml(relay.url + "/v1", batching="{window_ms: 200, max_batch: 8}"), cache_dir=tmp_path / "b"
    )
    alone = await make_gateway(model_yaml(relay.url + "/v1"), cache_dir=tmp_path / "a")
    loglikelihood = {
        "model": "smollm2",
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "echo": True,
        "seed": 1234,
    }
    bodies = [{**loglikelihood, "prompt": [f"Question {i}: what is {i} plus {i}? Answer:"]} for i in range(8)]
    together = await asyncio.gather(*(batched.post("/runs/b/v1/completions", b) for b in bodies))
    batched_calls = relay.calls["/v1/completions"]
    singles = [await alone.post("/runs/a/v1/completions", b) for b in bodies]
    assert batched_calls < 8 and batched_calls <= 2
    assert relay.calls["/v1/completions"] == batched_calls + 8
    assert [r.headers["X-Cache"] for r in together] == ["batched"] * 8
    for mine, single in zip(together, singles, strict=True):
        a, b = orjson.loads(await mine.read()), orjson.loads(await single.read())
        assert_same_answer_but_logprob_noise(a, b)
        assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]
    records = batched.records("b")
    assert [r["served"] for r in records] == ["batched"] * 8
    # Each client's own record: its own prompt, and exactly the answer that client got.
    by_prompt = {r["request"]["prompt"][0]: r for r in records}
    for body, mine in zip(bodies, together, strict=True):
        record = by_prompt[body["prompt"][0]]
        assert record["key"] == mine.headers["X-Record-Key"]
        assert record["response"] == orjson.loads(await mine.read())
    again = await batched.post("/runs/b/v1/completions", bodies[3])
    assert again.headers["X-Cache"] == "hit" and await again.read() == await together[3].read()


# vLLM's numerics are not batch-invariant: on this CPU build (bf16) the same prompt's logprobs
# move with what it was batched with, by up to 0.16 nats measured over these eight prompts (a
# wrongly split batch gives other tokens and differences of whole nats). Tokens, text and
# shape must match exactly; logprob values only within this.
BATCH_LOGPROB_TOLERANCE = 0.25


def _close(a: float | None, b: float | None) -> bool:
    return a == b if a is None or b is None else abs(a - b) <= BATCH_LOGPROB_TOLERANCE


def assert_same_answer_but_logprob_noise(batched: dict, alone: dict) -> None:
    """The same choice (tokens, text, offsets, finish, shape) as alone; logprobs within the tolerance."""
    (mine,), (theirs,) = batched["choices"], alone["choices"]
    noisy = ("logprobs", "prompt_logprobs")
    assert {k: v for k, v in mine.items() if k not in noisy} == {
        k: v for k, v in theirs.items() if k not in noisy
    }
    prompt_a, prompt_b = mine.get("prompt_logprobs"), theirs.get("prompt_logprobs")
    assert (prompt_a is None) == (prompt_b is None)
    for at_a, at_b in zip(prompt_a or [], prompt_b or [], strict=True):  # {token id: {logprob, ...}}
        assert (at_a is None) == (at_b is None)
        for token in (at_a or {}).keys() & (at_b or {}).keys():
            assert at_a[token]["decoded_token"] == at_b[token]["decoded_token"]
            assert _close(at_a[token]["logprob"], at_b[token]["logprob"])
    a, b = mine["logprobs"], theirs["logprobs"]
    assert a.keys() == b.keys()
    assert (a["tokens"], a["text_offset"]) == (b["tokens"], b["text_offset"])
    pairs = list(zip(a["token_logprobs"], b["token_logprobs"], strict=True))
    assert all(_close(x, y) for x, y in pairs), pairs
    for top_a, top_b in zip(a["top_logprobs"], b["top_logprobs"], strict=True):
        assert (top_a is None) == (top_b is None)
        if top_a is not None:  # a near-tie may swap which token is top: compare what both name
            assert all(_close(top_a[t], top_b[t]) for t in top_a.keys() & top_b.keys())
