"""A client that hangs up mid-request costs nobody anything: the upstream call finishes and is kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cache.records import read_records, shard_paths
from cache.runs import run_dir
from gateway.app import PIPELINE, create_app
from gateway.config import parse_config
from tests.conftest import model_yaml
from tests.processes import until
from tests.standin import Fault, StandIn

BODY = {"model": "standin", "prompt": "slow question", "max_tokens": 4, "temperature": 0}
RUN = "hangup"


class Served:
    """A gateway on a real port whose open client connections can be counted."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.url = f"http://127.0.0.1:{port}/runs/{RUN}/v1/completions"

    @property
    def connections(self) -> int:
        """Client connections still open (a handler left running keeps its closed one listed)."""
        assert self.runner.server is not None
        return sum(1 for handler in self.runner.server.connections if handler.transport is not None)


@pytest.fixture(params=[True, False], ids=["handler-cancelled", "handler-kept"])
async def gateway(request: pytest.FixtureRequest, standin: StandIn, tmp_path: Path) -> AsyncIterator[Served]:
    """Served both ways aiohttp can treat a hang-up: cancelling the handler (tests) or not (run_app)."""
    config = parse_config(
        model_yaml(standin.api_base, name="standin", retries="{attempts: 1}"), "test", cache_dir=str(tmp_path)
    )
    runner = web.AppRunner(create_app(config), handler_cancellation=request.param, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield Served(runner, site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    standin.released.set()  # a failed test must not leave a handler hanging through clean-up
    await runner.cleanup()


def records(tmp_path: Path) -> list[dict]:
    directory = run_dir(tmp_path, RUN)
    return list(read_records(shard_paths(directory))) if directory.exists() else []


async def hang_up(session: aiohttp.ClientSession, task: asyncio.Task, gateway: Served, before: int) -> None:
    """Close the client's connection and wait until the gateway has seen it go."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await session.close()

    async def gone() -> bool:
        return gateway.connections < before

    await until(gone, 10, "the gateway to notice the hang-up")


async def test_a_client_that_hangs_up_leaves_the_shared_upstream_call_to_finish_for_the_others(
    gateway: Served, standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin.script = [Fault("hang")]
    flights = gateway.runner.app[PIPELINE].flights  # type: ignore[union-attr]
    joined = asyncio.Event()
    join = flights.join

    def noting_join(key: str):  # type: ignore[no-untyped-def]
        flight = join(key)
        if flight is not None:
            joined.set()
        return flight

    monkeypatch.setattr(flights, "join", noting_join)
    leaver, sharer = aiohttp.ClientSession(), aiohttp.ClientSession()
    try:
        left = asyncio.ensure_future(leaver.post(gateway.url, json=BODY))
        await asyncio.wait_for(standin.arrived.wait(), 10)  # its upstream call is under way
        shared = asyncio.ensure_future(sharer.post(gateway.url, json=BODY))
        await asyncio.wait_for(joined.wait(), 10)  # the second client shares that call
        await hang_up(leaver, left, gateway, before=2)
        assert not shared.done()
        standin.released.set()  # the upstream answers only now, after the hang-up
        response = await asyncio.wait_for(shared, 10)
        assert response.status == 200, await response.text()
        assert response.headers["X-Cache"] == "coalesced"
        body = await response.read()
    finally:
        await sharer.close()
        await leaver.close()

    kept = records(tmp_path)
    assert sorted(r["served"] for r in kept) == ["coalesced", "miss"]
    miss = next(r for r in kept if r["served"] == "miss")
    assert miss["status"] == 200 and miss["response"]["choices"][0]["text"] == " answer to slow question"
    async with aiohttp.ClientSession() as session, session.post(gateway.url, json=BODY) as again:
        assert again.headers["X-Cache"] == "hit" and await again.read() == body
    assert standin.calls.total() == 1


async def test_a_lone_client_that_hangs_up_still_gets_its_answer_recorded_and_cached(
    gateway: Served, standin: StandIn, tmp_path: Path
) -> None:
    standin.script = [Fault("hang")]
    leaver = aiohttp.ClientSession()
    try:
        left = asyncio.ensure_future(leaver.post(gateway.url, json=BODY))
        await asyncio.wait_for(standin.arrived.wait(), 10)
        await hang_up(leaver, left, gateway, before=1)
    finally:
        await leaver.close()
    standin.released.set()

    async def recorded() -> list[dict]:
        return [r for r in records(tmp_path) if r["served"] == "miss" and r["status"] == 200]

    (miss,) = await until(recorded, 10, "the hung-up request's record")
    flights = gateway.runner.app[PIPELINE].flights  # type: ignore[union-attr]

    async def landed() -> bool:
        return len(flights) == 0

    await until(landed, 10, "the detached upstream call to finish")
    async with aiohttp.ClientSession() as session, session.post(gateway.url, json=BODY) as again:
        assert again.status == 200 and again.headers["X-Cache"] == "hit"
        assert again.headers["X-Record-Key"] == miss["key"]
    assert standin.calls.total() == 1
