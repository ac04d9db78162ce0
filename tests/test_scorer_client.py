"""The scorer's gateway client: a 429 is retried after its Retry-After, a 400 is not retried at all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from aiohttp import web

from cache.keys import request_key
from scorer.client import GatewayClient
from scorer.errors import GatewayFailure
from tests.conftest import GatewayFactory, model_yaml
from tests.processes import until
from tests.standin import Fault, StandIn

KEY = "k-1"
ANSWER = {"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": "ok"}]}


class ScriptedGateway:
    """Answers ``/runs/<run>/v1/completions`` with the scripted responses in turn, noting when each came."""

    def __init__(self, script: list[Callable[[], web.Response]]) -> None:
        self.script = script
        self.arrivals: list[float] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        return self.script.pop(0)()


def refused(retry_after: str) -> web.Response:
    """The gateway's own refusal when a model's queue is full (gateway/scheduler.py)."""
    error = {"error": {"message": "queue is full", "type": "rate_limit_error", "code": "queue_full"}}
    return web.json_response(error, status=429, headers={"Retry-After": retry_after})


def answered() -> web.Response:
    return web.Response(
        body=orjson.dumps(ANSWER), content_type="application/json", headers={"X-Record-Key": KEY}
    )


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[list[Callable[[], web.Response]]], ScriptedGateway]]:
    runners: list[web.AppRunner] = []

    async def start(script: list[Callable[[], web.Response]]) -> ScriptedGateway:
        gateway = ScriptedGateway(script)
        app = web.Application()
        app.router.add_post("/runs/{run}/v1/completions", gateway.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        gateway.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return gateway

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_429_is_retried_after_the_retry_after_the_gateway_sent(scripted) -> None:  # type: ignore[no-untyped-def]
    gateway = await scripted([lambda: refused("1"), answered])
    async with GatewayClient(gateway.url, "r", attempts=3) as client:
        answer = await client._post("/v1/completions", {"prompt": "p"}, KEY)
    assert answer == ANSWER
    first, second = gateway.arrivals
    # The client's own first backoff is at most 0.6 s: only Retry-After makes it wait a second.
    assert second - first >= 1.0


async def test_a_refusal_a_retry_cannot_mend_is_not_retried(scripted) -> None:  # type: ignore[no-untyped-def]
    bad = lambda: web.json_response({"error": {"message": "bad", "code": "invalid_body"}}, status=400)  # noqa: E731
    gateway = await scripted([bad, answered])
    async with GatewayClient(gateway.url, "r", attempts=3) as client:
        with pytest.raises(GatewayFailure, match="HTTP 400"):
            await client._post("/v1/completions", {"prompt": "p"}, KEY)
    assert len(gateway.arrivals) == 1


async def test_the_last_failure_is_reported_once_the_attempts_are_spent(scripted) -> None:  # type: ignore[no-untyped-def]
    gateway = await scripted([lambda: refused("0")] * 2)
    async with GatewayClient(gateway.url, "r", attempts=2) as client:
        with pytest.raises(GatewayFailure, match="HTTP 429"):
            await client._post("/v1/completions", {"prompt": "p"}, KEY)
    assert len(gateway.arrivals) == 2


async def test_a_real_gateways_full_queue_is_waited_out(
    standin: StandIn, make_gateway: GatewayFactory
) -> None:
    # One call at a time and no queue: while the first hangs, the scorer's request is refused (429).
    yaml = model_yaml(standin.api_base, name="standin", max_concurrency=1, max_queue=0, timeout_s=30)
    gateway = await make_gateway(yaml)
    standin.script = [Fault("hang")]
    first = asyncio.ensure_future(gateway.post("/runs/q/v1/completions", {"model": "standin", "prompt": "a"}))
    await standin.arrived.wait()
    body = {"model": "standin", "prompt": "b", "temperature": 0}
    async with GatewayClient(gateway.url, "q", attempts=3) as client:
        _, namespace = await client.model_names("standin")
        asked = asyncio.ensure_future(
            client._post("/v1/completions", body, request_key("/v1/completions", namespace, body))
        )

        async def refused() -> bool:
            return any(r["status"] == 429 for r in gateway.records("q"))

        await until(refused, 30, "the gateway to refuse the scorer's request")
        standin.released.set()
        answer = await asked
    assert answer["choices"][0]["text"].endswith("b")
    assert (await first).status == 200
    assert sorted(r["status"] for r in gateway.records("q")) == [200, 200, 429]
