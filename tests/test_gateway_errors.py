"""Bad input and upstream faults: each gets a clear OpenAI-style error, is recorded, is never cached."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from cache.index import ResponseIndex
from cache.records import shard_paths
from cache.runs import run_dir
from gateway.app import PIPELINE
from tests.conftest import GatewayFactory, RunningGateway, model_yaml
from tests.standin import Fault, StandIn
from tests.upstreams import free_port

BODY = {"model": "standin", "prompt": "hello", "max_tokens": 4, "temperature": 0}


@pytest.fixture
async def faulty(standin: StandIn, make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway(
        model_yaml(standin.api_base, name="standin", timeout_s=0.5, retries="{attempts: 1}")
        + "max_body_bytes: 4096\n"
    )


async def error_of(response) -> dict:  # type: ignore[no-untyped-def]
    payload = orjson.loads(await response.read())
    assert set(payload["error"]) == {"message", "type", "code"}
    return payload["error"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'{"model": "standin"}', "missing_field"),
        (b'{"model": "standin", "prompt": "x", "max_tokens": "many"}', "invalid_type"),
        (b'{"model": "standin", "prompt": "x", "n": 100000}', "invalid_type"),
        (b'{"model": 7, "prompt": "x"}', "invalid_type"),
        ('{"model": "standin", "prompt": "\udcff"}'.encode("utf-8", "surrogatepass"), "invalid_json"),
    ],
)
async def test_malformed_bodies_get_400_and_nothing_is_sent_upstream(
    faulty: RunningGateway, standin: StandIn, body: bytes, code: str
) -> None:
    response = await faulty.post("/v1/completions", body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert (await error_of(response))["code"] == code
    assert standin.calls.total() == 0


async def test_a_body_over_the_limit_gets_413(faulty: RunningGateway, standin: StandIn) -> None:
    response = await faulty.post("/v1/completions", {**BODY, "prompt": "x" * 10_000})
    assert response.status == 413
    assert (await error_of(response))["code"] == "body_too_large"
    assert standin.calls.total() == 0


async def test_an_unknown_model_gets_404_naming_the_configured_ones(faulty: RunningGateway) -> None:
    response = await faulty.post("/v1/completions", {**BODY, "model": "gpt-17"})
    assert response.status == 404
    error = await error_of(response)
    assert error["code"] == "model_not_found" and "standin" in error["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/runs/..%2F..%2Fetc/v1/completions",
        "/runs/a%2Fb/v1/completions",
        "/runs/sp%20ace/v1/completions",
        "/runs/" + "x" * 129 + "/v1/completions",
    ],
)
async def test_a_bad_run_id_in_the_url_gets_400(faulty: RunningGateway, path: str) -> None:
    response = await faulty.post(path, BODY)
    assert response.status == 400
    assert (await error_of(response))["code"] == "invalid_run_id"
    assert not (faulty.cache_dir / "runs").exists()


async def test_a_bad_run_id_header_gets_400(faulty: RunningGateway) -> None:
    response = await faulty.post("/v1/completions", BODY, headers={"X-Run-Id": "../escape"})
    assert response.status == 400
    assert (await error_of(response))["code"] == "invalid_run_id"


async def test_an_upstream_error_status_is_passed_on_with_its_message_and_not_cached(
    faulty: RunningGateway, standin: StandIn
) -> None:
    standin.script = [Fault("status", 400, "prompt too long for this model")]
    failed = await faulty.post("/v1/completions", BODY)
    assert failed.status == 400
    assert "prompt too long for this model" in (await error_of(failed))["message"]
    retried = await faulty.post("/v1/completions", BODY)
    assert (retried.status, retried.headers["X-Cache"]) == (200, "miss")
    assert standin.calls["/v1/completions"] == 2
    statuses = [(r["status"], r["served"], r["error"] is not None) for r in faulty.records()]
    assert statuses == [(400, "miss", True), (200, "miss", False)]


async def test_an_upstream_timeout_gets_504(faulty: RunningGateway, standin: StandIn) -> None:
    standin.script = [Fault("hang")]
    response = await faulty.post("/v1/completions", BODY)
    assert response.status == 504
    assert (await error_of(response))["code"] == "upstream_timeout"
    assert faulty.records()[0]["status"] == 504


async def test_an_unreachable_upstream_gets_502(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(model_yaml(f"http://127.0.0.1:{free_port()}/v1", name="standin"))
    response = await gateway.post("/v1/completions", BODY)
    assert response.status == 502
    assert (await error_of(response))["code"] == "upstream_unreachable"


@pytest.mark.parametrize("fault", ["drop", "invalid_json"])
async def test_a_torn_or_invalid_upstream_body_gets_502_and_is_not_cached(
    faulty: RunningGateway, standin: StandIn, fault: str
) -> None:
    standin.script = [Fault(fault)]
    response = await faulty.post("/v1/completions", BODY)
    assert response.status == 502
    key = response.headers.get("X-Record-Key") or faulty.records()[0]["key"]
    index = ResponseIndex(faulty.cache_dir)
    try:
        assert index.get(key) is None
    finally:
        index.close()
    assert (await faulty.post("/v1/completions", BODY)).headers["X-Cache"] == "miss"


async def test_a_stream_torn_before_done_ends_with_an_error_event_and_is_not_cached(
    faulty: RunningGateway, standin: StandIn
) -> None:
    standin.script = [Fault("torn_stream")]
    torn = await faulty.post("/v1/completions", {**BODY, "stream": True})
    events = (await torn.read()).split(b"\n\n")
    assert b"upstream" in events[-2] and b"[DONE]" not in await torn.read()
    again = await faulty.post("/v1/completions", {**BODY, "stream": True})
    assert again.headers["X-Cache"] == "miss" and (await again.read()).endswith(b"data: [DONE]\n\n")
    assert [r["status"] for r in faulty.records()] == [502, 200]


async def test_an_upstream_error_before_a_stream_starts_is_a_plain_json_error(
    faulty: RunningGateway, standin: StandIn
) -> None:
    standin.script = [Fault("status", 503, "overloaded")]
    response = await faulty.post("/v1/completions", {**BODY, "stream": True})
    assert response.status == 503
    assert response.headers["Content-Type"].startswith("application/json")
    assert "overloaded" in (await error_of(response))["message"]


async def test_unknown_routes_get_json_404(faulty: RunningGateway) -> None:
    response = await faulty.session.get(faulty.url + "/v2/nothing")
    assert response.status == 404
    assert (await error_of(response))["code"] == "not_found"


async def test_errors_leave_earlier_records_untouched(faulty: RunningGateway, standin: StandIn) -> None:
    await faulty.post("/v1/completions", BODY)
    shard = shard_paths(run_dir(faulty.cache_dir, "default"))[0]
    before = shard.read_bytes()
    standin.script = [Fault("status", 500, "boom")]
    await faulty.post("/v1/completions", {**BODY, "prompt": "other"})
    await faulty.post("/v1/completions", b"{broken")
    after = shard.read_bytes()
    assert after.startswith(before) and len(after) > len(before)


async def test_a_call_that_finishes_while_another_reads_the_disk_is_not_paid_twice(
    make_gateway: GatewayFactory, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = await make_gateway(model_yaml(standin.api_base, name="standin", retries="{attempts: 1}"))
    index = gateway.app[PIPELINE].index
    a_done = asyncio.Event()
    b_reading = asyncio.Event()
    real_aget = index.aget

    async def slow_aget(key: str) -> bytes | None:
        body = await real_aget(key)
        if body is None and standin.calls["/v1/completions"]:  # B, while A is upstream: nothing yet...
            b_reading.set()
            await a_done.wait()  # ...and B's disk read returns only after A has been answered
        return body

    monkeypatch.setattr(index, "aget", slow_aget)
    standin.script = [Fault("hang")]
    first = asyncio.ensure_future(gateway.post("/v1/completions", BODY))
    await standin.arrived.wait()
    second = asyncio.ensure_future(gateway.post("/v1/completions", BODY))
    await b_reading.wait()
    standin.released.set()
    a = await first
    a_done.set()
    b = await second
    assert standin.calls["/v1/completions"] == 1
    assert (a.headers["X-Cache"], b.headers["X-Cache"]) == ("miss", "hit")
    assert await a.read() == await b.read()
